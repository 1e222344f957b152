"""The key-encryption key (KEK) list and what it seals: AES-256-GCM with a random 96-bit
nonce, the thing's identity bound as associated data (a signing key's kid; a client's
"client:<client_id>" or an integration's "integration:<id>" for the shared secrets of
client_secret_jwt and HS256 JWT-bearer integrations, RFC 7523).

The list rotates without downtime: the first key encrypts, every one decrypts (as
MultiFernet does). Readers: token_issuer (signing keys), client_registry (seals the
shared secrets when they are made) and jwt_bearer (opens them); all read the same
settings, INBOUND_KEY_ENCRYPTION_KEYS_FILE, INBOUND_KEY_ENCRYPTION_KEYS or the older
INBOUND_KEY_ENCRYPTION_KEY, with the same values."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inboundlib.config import ConfigError, Env


class KeyEncryptor:
    """AES-256-GCM with a random 96-bit nonce; `label` (a kid, "client:<id>") is bound as
    associated data, so a blob cannot be moved to another row. `keks[0]` encrypts; each of
    `keks` is tried in turn to decrypt (a wrong key fails GCM's tag check, InvalidTag)."""

    def __init__(self, *keks: bytes):
        if not keks:
            raise ValueError("at least one key-encryption key is needed")
        self._aeads = [AESGCM(kek) for kek in keks]

    def encrypt(self, label: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aeads[0].encrypt(nonce, plaintext, label.encode())

    def decrypt(self, label: str, blob: bytes) -> bytes:
        return self.decrypt_with_index(label, blob)[0]

    def decrypt_with_index(self, label: str, blob: bytes) -> tuple[bytes, int]:
        """The plaintext and the position in the list of the key that opened it
        (0: the current key, nothing to rewrap)."""
        if len(blob) < 12 + 16:
            raise InvalidTag()
        for index, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(blob[:12], blob[12:], label.encode()), index
            except InvalidTag:
                continue
        raise InvalidTag()


def client_secret_label(client_id: str) -> str:
    """The associated data of a client_secret_jwt client's sealed secret."""
    return f"client:{client_id}"


def integration_secret_label(integration_id: str) -> str:
    """The associated data of an HS256 JWT-bearer integration's sealed secret."""
    return f"integration:{integration_id}"


def key_encryption_keys(env: Env, *, required: bool = True) -> tuple[bytes, ...]:
    """The key-encryption keys, first (encrypting) one first: one key per line of a mounted
    file (a Kubernetes Secret), or a comma list, or one key (the older setting). Exactly one
    of the three may be set, so no replica silently reads another list than intended.
    Not `required`: none set answers () (the caller then refuses what needs a key)."""
    # Each name spelt out: the deploy contract test finds the settings a service reads by them.
    settings = {"INBOUND_KEY_ENCRYPTION_KEYS_FILE": env.str("INBOUND_KEY_ENCRYPTION_KEYS_FILE", ""),
                "INBOUND_KEY_ENCRYPTION_KEYS": env.str("INBOUND_KEY_ENCRYPTION_KEYS", ""),
                "INBOUND_KEY_ENCRYPTION_KEY": env.str("INBOUND_KEY_ENCRYPTION_KEY", "")}
    given = [name for name, value in settings.items() if value]
    if not given and not required:
        return ()
    if len(given) != 1:
        raise ConfigError(f"set exactly one of {', '.join(env.name(n) for n in settings)}"
                          + (f" (got {', '.join(env.name(n) for n in given)})" if given else ""))
    name = given[0]
    value = settings[name]
    if name == "INBOUND_KEY_ENCRYPTION_KEYS_FILE":
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ConfigError(f"{env.name(name)}: cannot read {value}: {exc.strerror}") from None
        items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    else:
        items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{env.name(name)} holds no key")
    keys = []
    for position, item in enumerate(items, 1):
        try:
            keys.append(Env({"key": item}).key32("key"))
        except ConfigError as exc:  # its message names no key material, only the length or the alphabet
            raise ConfigError(f"{env.name(name)}: key {position} {str(exc).removeprefix('key ')}") from None
    return tuple(keys)
