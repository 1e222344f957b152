"""client_credentials grant service (RFC 6749 §4.4)."""
