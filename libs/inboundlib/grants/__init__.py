"""The contract every grant service shares: a token request in, a token or an OAuth error out."""
