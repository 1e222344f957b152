"""edge: the HTTP face of Inbound (RFC 6749 endpoints, metadata, JWKS)."""
