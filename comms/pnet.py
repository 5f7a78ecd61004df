"""Private swarms: the libp2p pnet pre-shared key, in the `swarm.key` file format of libp2p and IPFS.

The file is three lines: `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits (32 bytes). Nodes whose keys
differ cannot complete a connection (every byte on the socket is XSalsa20-encrypted with the key).
"""

from __future__ import annotations

import os
from pathlib import Path

from comms.errors import SwarmKeyError

HEADER = "/key/swarm/psk/1.0.0/"
ENCODING = "/base16/"


def format_swarm_key(key: bytes) -> str:
    if len(key) != 32:
        raise ValueError(f"a swarm key has 32 bytes, got {len(key)}")
    return f"{HEADER}\n{ENCODING}\n{key.hex()}\n"


def generate_swarm_key() -> str:
    """A new random swarm.key file's text."""
    return format_swarm_key(os.urandom(32))


def write_swarm_key(path: Path) -> None:
    """Write a new random swarm.key (atomically, mode 0600)."""
    from comms.identity import write_private_file

    write_private_file(path, generate_swarm_key().encode())


def parse_swarm_key(text: str) -> str:
    """Return the key as 64 lowercase hex digits, or raise SwarmKeyError saying what is wrong."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) != 3:
        raise SwarmKeyError(f"swarm key must have 3 lines ({HEADER}, {ENCODING}, key), got {len(lines)}")
    if lines[0] != HEADER:
        raise SwarmKeyError(f"swarm key line 1 must be {HEADER!r}, got {lines[0][:40]!r}")
    if lines[1] != ENCODING:
        raise SwarmKeyError(f"swarm key line 2 must be {ENCODING!r} (only base16 is supported), got {lines[1][:40]!r}")
    key = lines[2].lower()
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise SwarmKeyError("swarm key line 3 must be 64 hex digits")
    return key


def read_swarm_key(path: Path) -> str:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SwarmKeyError(f"cannot read swarm key file {path}: {err}") from err
    try:
        return parse_swarm_key(text)
    except SwarmKeyError as err:
        raise SwarmKeyError(f"{path}: {err}") from err
