"""The bare HTTP endpoint: a minimal Starlette app answering POST with a small
fixed JSON, served by uvicorn (httptools, uvloop, no access log) in its own
process — the floor under the edge's own HTTP cost.

    python -m bench.bare_app PORT
"""
from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = (b'{"access_token":"bare","token_type":"Bearer","expires_in":1800,'
        b'"scope":"api.read api.write"}')


async def token(request) -> Response:
    return Response(BODY, media_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


app = Starlette(routes=[Route("/oauth/token", token, methods=["POST"])])


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                lifespan="off", log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
