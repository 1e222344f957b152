"""The module table: every service of Inbound, one row each.

Each process entry point (`python -m services.<name>`), the one-process mode
(`services.all_in_one`), the dev stack (`make run`), the deploy contract test
and the bench read this table. A row names the service, its assembly
(`services/<name>/assembly.py`, or the shared grant assembly), the services it
calls, its ports in the standard layout (gRPC; extra ones such as
token_issuer's introspection-only port; HTTP for the edge; metrics) and, for a
grant service, its grant type.

Adding a service: a folder `services/<name>/` with its assembly (or, for a
grant, its `grant.py` with `build(deps)`), a three-line `__main__.py`, and a
row here. See libs/inboundlib/hosting.py for what an assembly provides.
"""
from __future__ import annotations

from inboundlib import hosting
from inboundlib.hosting import GRPC, HTTP, INTROSPECTION, Module, Port

GRANT_ASSEMBLY = "services.grant_process"


def _grpc(number: int) -> Port:
    return Port(GRPC, "INBOUND_GRPC_PORT", number)


MODULES: tuple[Module, ...] = (
    Module("client_registry", "services.client_registry.assembly",
           ports=(_grpc(50051),), address_env="INBOUND_REGISTRY_ADDR"),
    Module("token_issuer", "services.token_issuer.assembly", depends_on=("client_registry",),
           ports=(_grpc(50052), Port(INTROSPECTION, "INBOUND_INTROSPECTION_PORT", 50053, optional=True)),
           # Client assertions of introspecting and revoking clients: jwt_bearer; JWTs of other
           # issuers (ForeignTokens): third_party_token. Both issue through token_issuer, so they
           # are called later (not start-up dependencies).
           address_env="INBOUND_ISSUER_ADDR", calls_later=("jwt_bearer", "third_party_token")),
    Module("client_credentials", GRANT_ASSEMBLY, depends_on=("client_registry", "token_issuer", "jwt_bearer"),
           ports=(_grpc(50061),), grant_type="client_credentials"),
    Module("password", GRANT_ASSEMBLY, depends_on=("client_registry", "token_issuer", "jwt_bearer"),
           ports=(_grpc(50062),), grant_type="password"),
    Module("refresh_token", GRANT_ASSEMBLY, depends_on=("client_registry", "token_issuer", "jwt_bearer"),
           ports=(_grpc(50063),), grant_type="refresh_token"),
    # The browser: the authorize decisions (authorize contract) and the code-for-token exchange,
    # implicit included (one service: both share every step but the last). Its own assembly.
    Module("authorization_code", "services.authorization_code.assembly",
           depends_on=("client_registry", "token_issuer", "jwt_bearer"),
           ports=(_grpc(50064),), grant_type="authorization_code"),
    # RFC 7523: the JWT bearer grant, and client assertions (private_key_jwt, client_secret_jwt) checked
    # for every service that authenticates clients (its address setting is theirs; the edge finds the
    # grant among its grants). Its own assembly; it fetches keys over HTTPS.
    Module("jwt_bearer", "services.jwt_bearer.assembly", depends_on=("client_registry", "token_issuer"),
           ports=(_grpc(50065),), grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer",
           address_env="INBOUND_JWT_BEARER_ADDR"),
    # RFC 8693 token exchange, and registered OpenID providers' tokens accepted as-is (ForeignTokens, for
    # token_issuer's introspection). Its own assembly; it fetches the providers' keys over HTTPS.
    Module("third_party_token", "services.third_party_token.assembly",
           depends_on=("client_registry", "token_issuer", "jwt_bearer"),
           ports=(_grpc(50066),), grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
           address_env="INBOUND_THIRD_PARTY_TOKEN_ADDR"),
    Module("audit", "services.audit.assembly", ports=(_grpc(50070),), address_env="INBOUND_AUDIT_ADDR"),
    Module("edge", "services.edge.assembly", depends_on=("token_issuer",), calls_grants=True,
           ports=(Port(HTTP, "INBOUND_HTTP_PORT", 8080),)),
)

TABLE: dict[str, Module] = {m.name: m for m in MODULES}
NAMES: tuple[str, ...] = tuple(TABLE)
GRANTS: dict[str, Module] = {m.grant_type: m for m in MODULES if m.grant_type}
ALL_IN_ONE = "all_in_one"


def run(name: str) -> None:
    """The process of one service (every `services/<name>/__main__.py`)."""
    _run(name, [name])


def run_all() -> None:
    """Every service in one process (`services/all_in_one`). Its default event loop is
    asyncio's: one loop saturated by every service's work serves connections fairly
    there and not under uvloop (see inboundlib.service.run)."""
    _run(ALL_IN_ONE, list(NAMES), event_loop="asyncio")


def _run(process_name: str, names: list[str], event_loop: str = "uvloop") -> None:
    from inboundlib import service
    from services import access  # it reads this table

    async def main(stop) -> None:
        await hosting.serve(TABLE, names, stop, process_name=process_name, access=access.POLICY)

    service.run(process_name, main, event_loop=event_loop)
