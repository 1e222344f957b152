"""inboundctl: the operator's command line for Inbound.

It manages registered clients, users and the scope catalog (through client_registry), signing
keys and token revocation (through token_issuer), and reads the audit log
(through audit), over the same gRPC clients the services use:

    inboundctl scope create api.read --description "Read your data"
    inboundctl client create --name billing-sync --scope api.read
    inboundctl client list
    inboundctl user create alice --role oauth_admin      (the password is asked for twice)
    inboundctl user set-password alice --password-stdin < password-file
    inboundctl client revoke-tokens CLIENT_ID
    inboundctl keys rotate --activation-delay 3600
    inboundctl audit search --client CLIENT_ID --since 1h

Every command takes --json for machine-readable output. Exit codes: 0 done,
1 a service could not be reached or failed, 2 bad input (also: deleting a scope
a client has), 3 no such client, user or scope, 4 it exists already.

It connects with mutual TLS, as an operator: the certificate (its SPIFFE ID
`spiffe://<trust domain>/operator/<name>`), its key and the installation's CA
come from the same settings the services read (`make run` prints them for its
operator certificate `operator/dev`):

    INBOUND_TLS_CERT_FILE=... INBOUND_TLS_KEY_FILE=... INBOUND_TLS_CA_FILE=... inboundctl client list

INBOUND_GRPC_TLS=plaintext talks to a stack that runs without TLS (and says so on stderr).
"""
from __future__ import annotations

import sys

PLAINTEXT_WARNING = ("inboundctl: warning: INBOUND_GRPC_TLS=plaintext: this connection is unencrypted and "
                     "you are not authenticated (the audit log names whatever --operator says)")


def tls_config():
    """The TLS settings from the environment (inboundlib.tls); a ConfigError names what is missing.
    Plaintext, chosen explicitly, is said on stderr: nothing about it is authenticated."""
    from inboundlib import tls
    from inboundlib.config import Env

    config = tls.TlsConfig.from_env(Env())
    if config.plaintext:
        print(PLAINTEXT_WARNING, file=sys.stderr)
    return config
