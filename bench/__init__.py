"""`make bench`: Inbound's token rates and CPU per token, side by side with the
machine's own limits (raw ES256 signing, a bare HTTP endpoint) measured in the
same run. The machine is shared and noisy: read the ratios, not the absolutes.

Modules:
- signing   raw pyjwt ES256 signing on one core
- bare_app  the bare HTTP endpoint (Starlette on uvicorn) run as its own process
- loadgen   wrk with a Lua script (installed with apt-get if missing), or a
            Python asyncio fallback, both giving the same result dict
- procstat  CPU time of process trees and of the whole machine from /proc
- run       the orchestration, the printed table and build/bench/results.json
"""
