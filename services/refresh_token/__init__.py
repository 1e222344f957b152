"""refresh_token grant service (RFC 6749 §6, RFC 9700 §4.14: rotation and reuse detection)."""
