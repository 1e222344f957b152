"""OAuth 2.0 protocol rules, each in one place, each citing its RFC section."""
