"""The edge's routes, one module per family over one app (services/edge/app.py):
`oauth` (the OAuth API: token, introspection, revocation), `discovery`
(metadata and JWKS); browser and admin routes join the same way."""
