"""Shared code of every Inbound service: OAuth protocol rules (oauth/), the grant
contract (grants/), gRPC and process bootstrap, events, config, logs, metrics."""
