"""Framed, typed messages on a libp2p stream: one MessagePack message per varint-prefixed frame.

Every read has a deadline and a size limit checked before the body is read. libp2p's stream errors become
StreamClosedError; bad bytes become ProtocolError with its code. Knows streams and messages, not what they mean.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from comms.errors import CommsError
from comms.metrics import NetMetrics
from protocols import ErrorReply, FrameDecoder, Limits, Message, ProtocolError, decode, encode, encode_frame
from protocols.errors import ErrorCode

READ_CHUNK_BYTES = 64 * 1024


class StreamClosedError(CommsError):
    """The remote closed or reset the stream before a whole message arrived."""


class RemoteError(CommsError):
    """The remote answered with an ErrorReply."""

    def __init__(self, reply: ErrorReply) -> None:
        self.reply = reply
        self.code = reply.error_code
        super().__init__(f"peer refused: {self.code.name}: {reply.message}")


class MessageStream:
    """Typed request/response over one libp2p stream, with byte accounting in ``metrics``."""

    def __init__(self, stream: INetStream, limits: Limits, metrics: NetMetrics | None = None) -> None:
        self.stream = stream
        self.limits = limits
        self.metrics = metrics
        self._decoder = FrameDecoder(limits.max_message_bytes)
        self._ready: list[bytes] = []

    async def send(self, message: Message) -> None:
        frame = encode_frame(encode(message))
        try:
            await self.stream.write(frame)
        except (BaseLibp2pError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
            raise StreamClosedError(f"cannot write {message.TYPE}: {err}") from err
        if self.metrics is not None:
            self.metrics.sent(message.TYPE, "stream", len(frame))

    async def _read_frame(self) -> bytes:
        while not self._ready:
            try:
                data = await self.stream.read(READ_CHUNK_BYTES)
            except EOFError:
                data = b""
            except (BaseLibp2pError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
                raise StreamClosedError(f"stream failed: {err}") from err
            if not data:
                if self._decoder.buffered_bytes:
                    raise ProtocolError(ErrorCode.MALFORMED, "stream ended inside a frame (truncated)")
                raise StreamClosedError("stream closed by the remote")
            if self.metrics is not None:
                self.metrics.add_bytes("stream", nbytes_in=len(data))
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    async def receive(self, timeout_s: float) -> Message:
        """Read one message within ``timeout_s``; raises ProtocolError(TIMEOUT) when the deadline passes."""
        with trio.move_on_after(timeout_s) as scope:
            frame = await self._read_frame()
        if scope.cancelled_caught:
            raise ProtocolError(ErrorCode.TIMEOUT, f"no message within {timeout_s:.1f} s")
        message = decode(frame, limits=self.limits)
        if self.metrics is not None:
            self.metrics.messages_in[message.TYPE] += 1
        return message

    async def receive_reply(self, expected: type[Message], timeout_s: float) -> Message:
        """Read one message that must be ``expected``; an ErrorReply raises RemoteError."""
        message = await self.receive(timeout_s)
        if isinstance(message, ErrorReply):
            raise RemoteError(message)
        if not isinstance(message, expected):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"expected {expected.__name__}, got {type(message).__name__}",
                field="type",
            )
        return message

    async def refuse(self, err: ProtocolError, retry_after_ms: int | None = None) -> None:
        """Answer with a typed ErrorReply, best effort: the remote may already be gone."""
        if self.metrics is not None:
            self.metrics.refuse(err.code)
        try:
            with trio.move_on_after(1.0):
                await self.send(ErrorReply.from_error(err, retry_after_ms))
        except StreamClosedError:
            pass

    async def close(self) -> None:
        try:
            with trio.move_on_after(1.0):
                await self.stream.close()
        except (BaseLibp2pError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def reset(self) -> None:
        try:
            with trio.move_on_after(1.0):
                await self.stream.reset()
        except (BaseLibp2pError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
