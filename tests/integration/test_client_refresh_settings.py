"""The two client settings of issue 8 through the registry's gRPC API: a public client's
permission to use the password grant (RFC 6749 §4.3.2) and a refresh-token family's
absolute lifetime."""
from __future__ import annotations

import pytest

from services.client_registry.api import MAX_LIFETIME, ClientSpec, ClientUpdate, InvalidArgument
from tests.support import ensure_scopes


async def test_new_clients_allow_neither_by_default(make_client):
    client, _ = await make_client()
    assert client.allow_public_password_grant is False
    assert client.refresh_token_absolute_lifetime == 0


async def test_both_settings_are_stored_updated_and_read_back(registry):
    await ensure_scopes(registry, ["api.read"])
    client, _ = await registry.create_client(ClientSpec(
        name="mobile", public=True, grant_types=["password", "refresh_token"], scopes=["api.read"],
        allow_public_password_grant=True, refresh_token_absolute_lifetime=86_400))
    assert (client.allow_public_password_grant, client.refresh_token_absolute_lifetime) == (True, 86_400)
    stored = await registry.get_client(client.client_id)
    assert (stored.allow_public_password_grant, stored.refresh_token_absolute_lifetime) == (True, 86_400)

    updated = await registry.update_client(client.client_id, ClientUpdate(allow_public_password_grant=False,
                                                                          refresh_token_absolute_lifetime=0))
    assert (updated.allow_public_password_grant, updated.refresh_token_absolute_lifetime) == (False, 0)
    untouched = await registry.update_client(client.client_id, ClientUpdate(name="mobile app"))
    assert (untouched.allow_public_password_grant, untouched.refresh_token_absolute_lifetime) == (False, 0)
    # Shorter than the sliding lifetime is allowed: each token then ends with its family.
    shorter = await registry.update_client(client.client_id, ClientUpdate(refresh_token_absolute_lifetime=60))
    assert shorter.refresh_token_absolute_lifetime == 60 < shorter.refresh_token_lifetime


@pytest.mark.parametrize("value", [-1, MAX_LIFETIME + 1])
async def test_an_absolute_lifetime_out_of_range_is_refused(registry, make_client, value):
    with pytest.raises(InvalidArgument):
        await make_client(refresh_token_absolute_lifetime=value)
    client, _ = await make_client()
    with pytest.raises(InvalidArgument):
        await registry.update_client(client.client_id, ClientUpdate(refresh_token_absolute_lifetime=value))
    assert (await registry.get_client(client.client_id)).refresh_token_absolute_lifetime == 0


async def test_the_public_password_grant_flag_is_for_public_clients_only(registry, make_client):
    with pytest.raises(InvalidArgument):
        await make_client(allow_public_password_grant=True)
    client, _ = await make_client()
    with pytest.raises(InvalidArgument):
        await registry.update_client(client.client_id, ClientUpdate(allow_public_password_grant=True))
    assert (await registry.get_client(client.client_id)).allow_public_password_grant is False
