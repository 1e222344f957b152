"""`make bench`: Inbound's token and introspection rates and CPU per operation,
through the multi-process stack and again through the single process (services.all_in_one),
side by side with the machine's own limits (raw ES256 signing and verification,
a bare HTTP endpoint, a bare gRPC echo) measured in the same run. The machine is shared and noisy: read the ratios,
not the absolutes.

Modules:
- signing   raw pyjwt ES256 signing (and verification) on one core
- bare_app  the bare HTTP endpoint (Starlette on uvicorn) run as its own process
- grpc_echo the bare gRPC endpoint (grpc.aio, bytes echo, no protoc) run as its own process
- grpcload  the gRPC load generator (Python grpc.aio): echo, or introspection
            through IssuerClient (batched) or one-item unary Introspect calls
- loadgen   wrk with a Lua script (installed with apt-get if missing), or a
            Python asyncio fallback, both giving the same result dict
- procstat  CPU time of process trees and of the whole machine from /proc
- run       the orchestration, the printed table and build/bench/results.json
"""
