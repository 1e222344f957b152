"""client_registry: the one owner of OAuth data in Postgres (DESIGN.md)."""
