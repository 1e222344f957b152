"""Every service in one process, from the same code (as Loki and Mimir run every component in one binary)."""
