"""One package per service (DESIGN.md); each runs as `python -m services.<name>`."""
