"""token_issuer: signing keys, access tokens, JWKS (DESIGN.md)."""
