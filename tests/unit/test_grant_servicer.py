"""The GrantService servicer refuses a grant type it does not serve, before its handler runs."""
from __future__ import annotations

from inbound.grant.v1 import grant_pb2 as pb
from inboundlib.grants.server import GrantServicer


class RecordingHandler:
    grant_type = "client_credentials"

    def __init__(self):
        self.calls = 0

    async def handle(self, request):
        self.calls += 1
        raise AssertionError("the handler must not run")


async def test_a_grant_type_the_service_does_not_serve_is_unsupported_grant_type():
    handler = RecordingHandler()
    result = await GrantServicer(handler)._one(pb.TokenRequest(grant_type="password"))
    assert result.HasField("error") and result.error.code == "unsupported_grant_type"
    assert handler.calls == 0
