"""inboundctl's files named by options (cli/inboundctl/federation_commands.py): a JWKS or a
certificate is UTF-8 text (else exit 2, not a traceback); an HS256 secret file is the secret's
bytes, a text one without the newline an editor adds."""
from __future__ import annotations

import argparse

import pytest

from inboundctl.errors import EXIT_INVALID, CliError
from inboundctl.federation_commands import _integration_secret, read_option_file


def secret_from(path) -> bytes | None:
    return _integration_secret(argparse.Namespace(generate_hs256_secret=False, hs256_secret_file=str(path)))[0]


def test_a_binary_secret_is_taken_byte_for_byte_and_a_text_one_without_its_newline(tmp_path):
    binary = bytes([0xFF, 0x20, 0x0A]) + bytes(range(29)) + b"\n"  # not UTF-8; ends in whitespace bytes
    (tmp_path / "bin").write_bytes(binary)
    assert secret_from(tmp_path / "bin") == binary
    (tmp_path / "text").write_text("a-shared-secret-of-32-characters-or-more\n")
    assert secret_from(tmp_path / "text") == b"a-shared-secret-of-32-characters-or-more"


def test_a_key_file_that_is_not_text_is_bad_input(tmp_path):
    (tmp_path / "jwks").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CliError, match="not UTF-8") as caught:
        read_option_file("--jwks", str(tmp_path / "jwks"))
    assert caught.value.code == EXIT_INVALID
    with pytest.raises(CliError, match="cannot read") as caught:
        read_option_file("--jwks", str(tmp_path / "missing"))
    assert caught.value.code == EXIT_INVALID
