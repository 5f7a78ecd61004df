"""Identity files (mode 0600, stable PeerID, clear errors) and the swarm.key format."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comms.errors import IdentityError, SwarmKeyError
from comms.identity import load_or_create_identity, peer_id_of, read_identity
from comms.pnet import format_swarm_key, parse_swarm_key
from swarm.cli.commands import _register_all, app

_register_all()


def test_keygen_prints_only_the_peer_id_and_writes_0600(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    result = CliRunner().invoke(app, ["keygen", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("12D3KooW")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peer_id_of(read_identity(path)) == lines[0]
    assert peer_id_of(load_or_create_identity(path)) == lines[0]  # same file, same PeerID
    again = CliRunner().invoke(app, ["keygen", str(path)])
    assert again.exit_code != 0 and "exists" in again.output


def test_missing_identity_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = peer_id_of(load_or_create_identity(path))
    assert path.exists() and first == peer_id_of(load_or_create_identity(path))


def test_bad_identity_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.key"
    path.write_bytes(b"not a key at all")
    with pytest.raises(IdentityError, match="not a libp2p private key"):
        read_identity(path)


def test_swarm_key_format() -> None:
    key = bytes(range(32))
    text = format_swarm_key(key)
    assert text.splitlines() == ["/key/swarm/psk/1.0.0/", "/base16/", key.hex()]
    assert parse_swarm_key(text) == key.hex()
    assert parse_swarm_key(text.replace(key.hex(), key.hex().upper())) == key.hex()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/key/swarm/psk/1.0.0/\n/base16/\n", "3 lines"),
        ("/key/other/\n/base16/\n" + "00" * 32, "line 1"),
        ("/key/swarm/psk/1.0.0/\n/base64/\n" + "00" * 32, "line 2"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "zz" * 32, "64 hex digits"),
    ],
)
def test_bad_swarm_keys(text: str, message: str) -> None:
    with pytest.raises(SwarmKeyError, match=message):
        parse_swarm_key(text)
