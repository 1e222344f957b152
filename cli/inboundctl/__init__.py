"""inboundctl: the operator's command line for Inbound.

It manages registered clients (through client_registry), signing keys and
token revocation (through token_issuer), and reads the audit log (through
audit), over the same gRPC clients the services use:

    inboundctl client create --name billing-sync --scope api.read
    inboundctl client list
    inboundctl client revoke-tokens CLIENT_ID
    inboundctl keys rotate --activation-delay 3600
    inboundctl audit search --client CLIENT_ID --since 1h

Every command takes --json for machine-readable output. Exit codes: 0 done,
1 a service could not be reached or failed, 2 bad input, 3 no such client.
"""
