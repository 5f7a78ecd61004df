"""MessagePack encoding of typed messages, with strict validation of everything decoded.

A message on the wire is one MessagePack map: ``{"type": <tag>, "v": [major, minor], <field>: <value>, ...}``.
Fields are checked against the message dataclass's type hints: a missing or mistyped field raises ProtocolError
naming the field; unknown fields are ignored (forward compatibility); a different major version is refused with
UNSUPPORTED_VERSION. This module knows MessagePack and dataclasses, nothing about streams or peers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from protocols.errors import ErrorCode, ProtocolError
from protocols.limits import STREAM_LIMITS, Limits

M = TypeVar("M", bound="Message")

_REGISTRY: dict[str, type[Message]] = {}


class Record:
    """A nested structure inside a message (no type tag, no version). Subclasses are dataclasses."""


class Message(Record):
    """A top-level message. Subclasses are dataclasses with ``TYPE`` (wire tag) and ``VERSION`` (major, minor)."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[tuple[int, int]] = (1, 0)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in _REGISTRY:
                raise TypeError(f"message type tag {cls.TYPE!r} registered twice")
            _REGISTRY[cls.TYPE] = cls


def message_types() -> dict[str, type[Message]]:
    """Every registered message type by wire tag."""
    return dict(_REGISTRY)


# ---------------------------------------------------------------- encoding


def _to_plain(value: Any) -> Any:
    if isinstance(value, Record):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def encode(message: Message) -> bytes:
    """Serialize a message. Deterministic: the same message always gives the same bytes."""
    body = {"type": message.TYPE, "v": list(message.VERSION)}
    body.update(_to_plain(message))
    return msgpack.packb(body, use_bin_type=True)


# ---------------------------------------------------------------- decoding


def _unpack(data: bytes, limits: Limits) -> Any:
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {len(data)} bytes, limit is {limits.max_message_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_bin_bytes,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except ValueError as err:
        # msgpack raises ValueError("... exceeds max_..._len(...)") before allocating, and ExtraData/FormatError
        # (ValueError subclasses) for trailing bytes and bad formats.
        code = ErrorCode.TOO_LARGE if "exceeds max" in str(err) else ErrorCode.MALFORMED
        raise ProtocolError(code, f"undecodable MessagePack: {err}") from err
    except (msgpack.StackError, TypeError, UnicodeDecodeError) as err:
        raise ProtocolError(ErrorCode.MALFORMED, f"undecodable MessagePack: {err}") from err
    except Exception as err:  # msgpack's C extension can raise others on hostile input
        raise ProtocolError(ErrorCode.MALFORMED, f"undecodable MessagePack: {type(err).__name__}") from err


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _check(value: Any, tp: Any, path: str) -> Any:
    """Validate ``value`` against type hint ``tp``; return it converted (records built, ints widened to float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, path)
            except ProtocolError as err:
                errors.append(err)
        raise errors[0] if errors else ProtocolError(ErrorCode.BAD_REQUEST, "must not be null", field=path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ProtocolError(ErrorCode.MALFORMED, f"expected array, got {type(value).__name__}", field=path)
        return [_check(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.MALFORMED, f"expected map, got {type(value).__name__}", field=path)
        return {_check(k, key_tp, path): _check(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.MALFORMED, f"expected map, got {type(value).__name__}", field=path)
        return _build(tp, value, prefix=f"{path}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(ErrorCode.MALFORMED, f"expected float, got {type(value).__name__}", field=path)
        value = float(value)
        if not math.isfinite(value):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"must be finite, got {value}", field=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(ErrorCode.MALFORMED, f"expected int, got {type(value).__name__}", field=path)
        return value
    if tp in (str, bytes, bool):
        if type(value) is not tp:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"expected {_type_name(tp)}, got {type(value).__name__}", field=path
            )
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r} at {path}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A record class's resolved field types (resolving them costs more than decoding a whole announce)."""
    return typing.get_type_hints(cls)


def _build(cls: type[Record], body: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{prefix}{f.name}"
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.MALFORMED, "required field is missing", field=path)
            continue
        kwargs[f.name] = _check(body[f.name], hints[f.name], path)
    try:
        record = cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as err:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(err), field=prefix.rstrip(".") or None) from err
    validate = getattr(record, "validate", None)
    if validate is not None:
        validate()
    return record


def _header(body: Any) -> tuple[type[Message], dict[str, Any]]:
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"message must be a map, got {type(body).__name__}")
    tag = body.get("type")
    if not isinstance(tag, str):
        raise ProtocolError(ErrorCode.MALFORMED, "missing or non-string type tag", field="type")
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {tag[:64]!r}", field="type")
    version = body.get("v")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in version)
    ):
        raise ProtocolError(ErrorCode.MALFORMED, "version must be [major, minor]", field="v")
    if version[0] != cls.VERSION[0]:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"{tag} version {version[0]}.x is not spoken here (this node speaks {cls.VERSION[0]}.x)",
            field="v",
        )
    return cls, body


def decode(data: bytes, *, limits: Limits = STREAM_LIMITS) -> Message:
    """Decode and validate one message of any registered type."""
    cls, body = _header(_unpack(data, limits))
    return _build(cls, body)


def decode_as(data: bytes, expected: type[M] | tuple[type[M], ...], *, limits: Limits = STREAM_LIMITS) -> M:
    """Decode one message and require it to be of the ``expected`` type(s)."""
    message = decode(data, limits=limits)
    if not isinstance(message, expected):
        names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected {names}, got {type(message).__name__}", field="type")
    return message
