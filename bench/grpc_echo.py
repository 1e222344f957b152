"""The bare gRPC endpoint: a minimal grpc.aio server on uvloop (as every service
runs) with one unary method, /bench.Echo/Echo, that answers the request bytes
as they came. No protoc, no (de)serialisation (bytes in, bytes out), no
interceptors, no health service: the floor under any gRPC service's own cost.

    python -m bench.grpc_echo PORT
"""
from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from bench.loadgen import run_on_uvloop

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def echo(request: bytes, context) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    port = int(sys.argv[1])
    run_on_uvloop(serve(port))


if __name__ == "__main__":
    main()
