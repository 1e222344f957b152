"""third_party_token service: registered OpenID providers' tokens accepted as-is
(ForeignTokens.Introspect) and exchanged for Inbound's own (RFC 8693)."""
