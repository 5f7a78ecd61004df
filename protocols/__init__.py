"""The wire: versioned MessagePack messages, framing, protocol ids, limits and error codes.

Pure data and pure functions: no I/O, no torch, and no import of any other package of the project.
"""

from protocols.codec import Message, Record, decode, decode_as, encode, message_types
from protocols.errors import ErrorCode, ProtocolError, SwarmError
from protocols.framing import FrameDecoder, encode_frame
from protocols.generate import (
    Cancel,
    ChatMessage,
    GenerateAccepted,
    GenerateDone,
    GenerateRejected,
    GenerateRequest,
    Timings,
    TokenChunk,
    TokenLogprobs,
    Usage,
)
from protocols.limits import GOSSIP_LIMITS, STREAM_LIMITS, TENSOR_LIMITS, Limits
from protocols.messages import (
    Device,
    ErrorReply,
    Hardware,
    Load,
    PeerAnnounce,
    PeerRecord,
    PeersReply,
    PeersRequest,
    RLState,
    TrainingState,
)
from protocols.rollouts import ROLLOUT_LIMITS, RolloutBatch, RolloutGroup, TaskRefRecord

__all__ = [
    "GOSSIP_LIMITS",
    "ROLLOUT_LIMITS",
    "STREAM_LIMITS",
    "TENSOR_LIMITS",
    "Cancel",
    "ChatMessage",
    "Device",
    "ErrorCode",
    "ErrorReply",
    "FrameDecoder",
    "GenerateAccepted",
    "GenerateDone",
    "GenerateRejected",
    "GenerateRequest",
    "Hardware",
    "Limits",
    "Load",
    "Message",
    "PeerAnnounce",
    "PeerRecord",
    "PeersReply",
    "PeersRequest",
    "ProtocolError",
    "RLState",
    "Record",
    "RolloutBatch",
    "RolloutGroup",
    "SwarmError",
    "TaskRefRecord",
    "Timings",
    "TokenChunk",
    "TokenLogprobs",
    "TrainingState",
    "Usage",
    "decode",
    "decode_as",
    "encode",
    "encode_frame",
    "message_types",
]
