"""password grant service (RFC 6749 §4.3: resource owner password credentials)."""
