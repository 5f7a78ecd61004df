"""The private swarm key over the averaging stack: every hivemind RPC (DHT and averaging) needs proof of the key.

p2pd, the libp2p daemon hivemind runs, takes no pre-shared key, so the key cannot encrypt its sockets as pnet does
for the node's own host. Instead every RPC carries proof of the key, keyed by HMAC-SHA256 with a key derived from
the swarm key (never the key itself, never sent):
- DHT requests and responses (`SwarmKeyAuthorizer`, hivemind's authorizer hook): each request carries a time, a
  random nonce and a MAC over the whole message; the servicer refuses a stale time or a nonce it has seen, and the
  client refuses a response whose MAC or nonce does not match its request. A keyless process can neither store nor
  read records, so it never learns group keys or state donors, and never appears as one.
- Averaging RPCs (matchmaking, all-reduce parts, state download; `SwarmKeyGate`): the caller and the callee prove
  the key to each other once in a hello whose MACs bind both libp2p peer ids (authenticated by p2pd's noise/TLS
  handshake), a time and a nonce; the gate then refuses every averaging RPC from a peer that has not, and the
  stubs refuse to send to one that has not (so no request, tensor or state goes to a keyless process).

What it does not protect: a keyless process can still open a libp2p connection to p2pd and speak libp2p's own
protocols (identify, ping, the daemon's own Kademlia peer routing, which tells peer addresses, not records); it
learns the peer id and can make the node spend a MAC check per request. Tensors on the wire are encrypted by p2pd's
noise/TLS, not by the swarm key. A peer that holds the key is let in, not trusted: what it sends is checked by the
averaging code. This module knows nothing about tensors or models; it runs in the averaging process (it imports
hivemind).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import multiprocessing
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from hivemind.p2p import P2P, P2PContext, PeerID, ServicerBase, StubBase
from hivemind.proto.auth_pb2 import RequestAuthInfo, ResponseAuthInfo
from hivemind.utils.auth import AuthorizedRequestBase, AuthorizedResponseBase, AuthorizerBase
from hivemind.utils.crypto import RSAPublicKey

MAX_CLOCK_SKEW_S = 60.0  # a request whose time is further off than this is refused (it may be a replay)
MAX_NONCES = 100_000  # nonces remembered within the skew window; a flood past this is refused, not remembered
ADMISSION_TTL_S = 600.0  # a peer proves the key again after this long
MAX_ADMITTED = 4096
HELLO_NAME = "swarm_key_hello"
_NONCE_BYTES = 16


def derive_auth_key(swarm_key_hex: str) -> bytes:
    """The MAC key of the averaging stack: derived from the swarm key, so the pnet key itself is never used twice."""
    return hmac.new(bytes.fromhex(swarm_key_hex), b"swarm hivemind rpc auth v1", hashlib.sha256).digest()


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    msg = b"".join(struct.pack(">I", len(p)) + p for p in (label, *parts))  # length-prefixed: no ambiguity
    return hmac.new(key, msg, hashlib.sha256).digest()


class ReplayGuard:
    """Accepts a (time, nonce) pair once, and only within the clock-skew window of `clock`."""

    def __init__(self, clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES) -> None:
        self.clock = clock
        self.max_nonces = max_nonces
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # nonce -> when it may be forgotten

    def accept(self, sent_at: float, nonce: bytes) -> bool:
        now = self.clock()
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if not abs(sent_at - now) <= MAX_CLOCK_SKEW_S or len(nonce) != _NONCE_BYTES or nonce in self._seen:
            return False
        if len(self._seen) >= self.max_nonces:
            return False
        self._seen[nonce] = now + 2 * MAX_CLOCK_SKEW_S  # insertion order is expiry order
        return True


class SwarmKeyAuthorizer(AuthorizerBase):
    """hivemind's authorizer for the DHT: requests and responses MAC'd with the swarm-derived key."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._replays = ReplayGuard(clock)
        self._refused = multiprocessing.RawValue("q", 0)  # shared memory: hivemind forks the DHT's process

    @property
    def refused(self) -> int:
        return int(self._refused.value)

    def _count(self, ok: bool) -> bool:
        self._refused.value += not ok
        return ok

    async def sign_request(self, request: AuthorizedRequestBase, service_public_key: RSAPublicKey | None) -> None:
        auth = request.auth
        auth.time = self._clock()
        auth.nonce = secrets.token_bytes(_NONCE_BYTES)
        auth.signature = b""
        auth.signature = _mac(self._key, b"dht request", request.SerializeToString())

    async def validate_request(self, request: AuthorizedRequestBase) -> bool:
        auth = request.auth
        signature, auth.signature = auth.signature, b""
        ok = hmac.compare_digest(signature, _mac(self._key, b"dht request", request.SerializeToString()))
        return self._count(ok and self._replays.accept(auth.time, auth.nonce))

    async def sign_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> None:
        auth = response.auth
        auth.nonce = request.auth.nonce
        auth.signature = b""
        auth.signature = _mac(self._key, b"dht response", response.SerializeToString())

    async def validate_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> bool:
        auth = response.auth
        signature, auth.signature = auth.signature, b""
        ok = hmac.compare_digest(signature, _mac(self._key, b"dht response", response.SerializeToString()))
        return self._count(ok and hmac.compare_digest(auth.nonce, request.auth.nonce))


class SwarmKeyRefused(PermissionError):
    """A peer did not prove the swarm key (raised to hivemind, which refuses the RPC or fails the call)."""


class SwarmKeyGate:
    """Who proved the swarm key to this averaging process, and the hello that proves it both ways."""

    def __init__(self, key: bytes, local_id: PeerID, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.local_id = local_id
        self._clock = clock
        self._replays = ReplayGuard(clock)
        self._admitted: OrderedDict[PeerID, float] = OrderedDict()  # peer -> admitted until
        self._hellos: dict[PeerID, asyncio.Lock] = {}
        self._refused = multiprocessing.RawValue("q", 0)  # shared memory: hivemind forks the averager's process

    @property
    def refused(self) -> int:
        return int(self._refused.value)

    def _refuse(self, message: str) -> SwarmKeyRefused:
        self._refused.value += 1
        return SwarmKeyRefused(message)

    def admitted(self, peer: PeerID) -> bool:
        if peer == self.local_id:
            return True
        until = self._admitted.get(peer)
        return until is not None and until > self._clock()

    def _admit(self, peer: PeerID) -> None:
        self._admitted.pop(peer, None)
        self._admitted[peer] = self._clock() + ADMISSION_TTL_S
        while len(self._admitted) > MAX_ADMITTED:
            self._admitted.popitem(last=False)

    def _request_mac(self, caller: PeerID, callee: PeerID, sent_at: float, nonce: bytes) -> bytes:
        return _mac(
            self._key, b"hello request", caller.to_bytes(), callee.to_bytes(), struct.pack(">d", sent_at), nonce
        )

    def _response_mac(self, caller: PeerID, callee: PeerID, nonce: bytes) -> bytes:
        return _mac(self._key, b"hello response", caller.to_bytes(), callee.to_bytes(), nonce)

    async def handle_hello(self, request: RequestAuthInfo, context: P2PContext) -> ResponseAuthInfo:
        """Servicer side: the MAC binds the caller's authenticated peer id, so a proof cannot be replayed by
        another peer; time and nonce keep the same peer from replaying an old one."""
        want = self._request_mac(context.remote_id, self.local_id, request.time, request.nonce)
        if not hmac.compare_digest(request.signature, want) or not self._replays.accept(request.time, request.nonce):
            raise self._refuse(f"{context.remote_id} did not prove the swarm key")
        self._admit(context.remote_id)
        return ResponseAuthInfo(
            nonce=request.nonce, signature=self._response_mac(context.remote_id, self.local_id, request.nonce)
        )

    async def ensure(self, p2p: P2P, peer: PeerID, namespace: str | None, timeout_s: float) -> None:
        """Client side: prove the key to `peer` and check its proof, unless done within the last TTL."""
        if self.admitted(peer):
            return
        lock = self._hellos.setdefault(peer, asyncio.Lock())
        try:
            async with lock:
                if self.admitted(peer):
                    return
                sent_at, nonce = self._clock(), secrets.token_bytes(_NONCE_BYTES)
                request = RequestAuthInfo(
                    time=sent_at, nonce=nonce, signature=self._request_mac(self.local_id, peer, sent_at, nonce)
                )
                try:
                    response = await asyncio.wait_for(
                        p2p.call_protobuf_handler(peer, hello_handle(namespace), request, ResponseAuthInfo), timeout_s
                    )
                except Exception as err:  # a keyless peer refuses or lacks the handler; a dead one times out
                    raise self._refuse(f"{peer} did not answer the swarm-key hello: {err!r}") from err
                if response.nonce != nonce or not hmac.compare_digest(
                    response.signature, self._response_mac(self.local_id, peer, nonce)
                ):
                    raise self._refuse(f"{peer} did not prove the swarm key")
                self._admit(peer)
        finally:
            if not lock.locked():
                self._hellos.pop(peer, None)

    def check(self, context: P2PContext) -> None:
        if not self.admitted(context.remote_id):
            raise self._refuse(f"{context.remote_id} has not proven the swarm key")


def hello_handle(namespace: str | None) -> str:
    return HELLO_NAME if namespace is None else f"{namespace}::{HELLO_NAME}"


class _GuardedServicer:
    """What hivemind registers as the handlers: each rpc_* of the servicer, after the gate's check."""

    def __init__(self, servicer: ServicerBase, gate: SwarmKeyGate) -> None:
        self._servicer = servicer
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)
        gate = self._gate

        if not inspect.isasyncgenfunction(method):

            async def guarded_unary(request: Any, context: P2PContext) -> Any:
                gate.check(context)
                return await method(request, context)

            return guarded_unary

        async def guarded_stream(request: Any, context: P2PContext) -> AsyncIterator[Any]:
            gate.check(context)
            async for message in method(request, context):
                yield message

        return guarded_stream


class _GuardedStub:
    """A stub whose calls first make sure the remote peer proved the swarm key."""

    def __init__(self, stub: StubBase, gate: SwarmKeyGate, timeout_s: float) -> None:
        self._stub = stub
        self._gate = gate
        self._timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not name.startswith("rpc_"):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._gate.ensure(self._stub._p2p, self._stub._peer, self._stub._namespace, self._timeout_s)
            return await method(*args, **kwargs)

        return call


class SwarmKeyGuarded(ServicerBase):
    """Mixin for a `DecentralizedAverager` whose RPCs need the swarm key (when `install_gate` was called).

    hivemind creates stubs through the class (`servicer_type.get_stub`), not an instance, so the gate is held by
    the class: one averager per averaging process, which is how `comms.hivemind_worker` runs."""

    _swarm_gate: SwarmKeyGate | None = None
    _swarm_hello_timeout_s: float = 5.0

    @classmethod
    def install_gate(cls, gate: SwarmKeyGate, hello_timeout_s: float) -> None:
        cls._swarm_gate = gate
        cls._swarm_hello_timeout_s = hello_timeout_s

    async def add_p2p_handlers(
        self, p2p: P2P, wrapper: Any = None, *, namespace: str | None = None, balanced: bool = False
    ) -> None:
        gate = type(self)._swarm_gate
        if gate is None:
            await super().add_p2p_handlers(p2p, wrapper, namespace=namespace, balanced=balanced)
            return
        guarded = _GuardedServicer(self if wrapper is None else wrapper, gate)
        await super().add_p2p_handlers(p2p, guarded, namespace=namespace, balanced=balanced)
        await p2p.add_protobuf_handler(hello_handle(namespace), gate.handle_hello, RequestAuthInfo)

    @classmethod
    def get_stub(cls, p2p: P2P, peer: PeerID, *, namespace: str | None = None) -> StubBase:
        stub = super().get_stub(p2p, peer, namespace=namespace)
        gate = cls._swarm_gate
        return stub if gate is None else _GuardedStub(stub, gate, cls._swarm_hello_timeout_s)  # type: ignore[return-value]
