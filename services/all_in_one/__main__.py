"""Inbound in one process: every service of services/modules.py from the same
assemblies as the separate processes, calling one another's plain Python
interfaces directly instead of over gRPC; one gRPC server per port, each
serving only what that port serves in the separate-process layout."""
from services import modules

if __name__ == "__main__":
    modules.run_all()
