"""One package per service (DESIGN.md); each runs as `python -m services.<name>`."""
import os

# Every line a process writes is JSON (inboundlib.logs), but gRPC's C core writes lines of
# its own to stderr, some of them on a peer's say: a refused TLS handshake (INFO), a server
# name no certificate carries (ERROR, quoting the name the peer sent). None, unless the
# operator asks (GRPC_VERBOSITY=error|info|debug, to debug TLS); what fails reaches our code
# as a failed call or connection, and is logged there. Read once, when grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
