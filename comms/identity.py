"""Node identity: one Ed25519 key per node, stored in a file, giving a stable PeerID.

The file holds the libp2p protobuf encoding of the private key (the format go-libp2p and kubo use), written with
mode 0600. Knows keys and files; nothing about hosts or sockets.
"""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.pb import crypto_pb2
from libp2p.peer.id import ID

from comms.errors import IdentityError


def peer_id_of(key_pair: KeyPair) -> str:
    """The base58 PeerID of a key pair."""
    return str(ID.from_pubkey(key_pair.public_key))


def generate_identity() -> KeyPair:
    return create_new_key_pair()


def write_identity(path: Path, key_pair: KeyPair) -> None:
    """Write the private key atomically with mode 0600."""
    write_private_file(path, key_pair.private_key.serialize())


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (never world-readable, not even briefly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_identity(path: Path) -> KeyPair:
    """Load an identity file written by write_identity (or by go-libp2p)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise IdentityError(f"cannot read identity file {path}: {err.strerror}") from err
    try:
        proto = crypto_pb2.PrivateKey.FromString(data)
    except Exception as err:
        raise IdentityError(f"identity file {path} is not a libp2p private key") from err
    if proto.key_type != KeyType.Ed25519.value:
        raise IdentityError(f"identity file {path} holds a {KeyType(proto.key_type).name} key; Ed25519 is required")
    if len(proto.data) not in (32, 64):
        raise IdentityError(f"identity file {path}: Ed25519 key has {len(proto.data)} bytes, expected 32 or 64")
    private = Ed25519PrivateKey.from_bytes(proto.data[:32])
    return KeyPair(private, private.get_public_key())


def load_or_create_identity(path: Path | None) -> KeyPair:
    """Read ``path``, creating it with a new key when missing; a fresh in-memory key when ``path`` is None."""
    if path is None:
        return generate_identity()
    path = Path(path)
    if not path.exists():
        key_pair = generate_identity()
        write_identity(path, key_pair)
        return key_pair
    return read_identity(path)
