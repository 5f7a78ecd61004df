"""The wire: versioned MessagePack messages, framing, protocol ids, limits and error codes.

Pure data and pure functions: no I/O, no torch, and no import of any other package of the project.
"""

from protocols.errors import ErrorCode, ProtocolError, SwarmError

__all__ = ["ErrorCode", "ProtocolError", "SwarmError"]
