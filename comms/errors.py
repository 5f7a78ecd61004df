"""Exceptions of the network layer, rooted in SwarmError; libp2p's own errors are translated into these."""

from __future__ import annotations

from protocols.errors import SwarmError


class CommsError(SwarmError):
    """The network layer failed."""


class IdentityError(CommsError):
    """An identity file is unreadable or not an Ed25519 private key."""


class SwarmKeyError(CommsError):
    """A swarm.key file is not in the libp2p pnet format."""


class DialError(CommsError):
    """A peer could not be reached."""


class ListenError(CommsError):
    """The host could not listen where the config says (address in use, not an address of this machine)."""
