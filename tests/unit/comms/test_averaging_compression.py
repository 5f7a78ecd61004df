"""Our codec as hivemind's compression: exact round trip, byte counting, refusal of bad parts.

hivemind cannot be imported in a process that imports libp2p, so the checks run in a fresh interpreter."""

from __future__ import annotations

import pytest

from tests.unit.comms.fresh_interpreter import assert_script_prints_ok

SCRIPT = r"""
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor, serialize_torch_tensor
from comms.hivemind_compression import install
comp = install("int8", 64)
x = torch.randn(1000)
msg = comp.compress(x, CompressionInfo.from_tensor(x))
assert msg.ByteSize() > 1000 + 4 * 16 and msg.ByteSize() < 1100, msg.ByteSize()
back = deserialize_torch_tensor(msg)  # hivemind's own dispatch finds our codec
assert float((back - x).abs().max()) <= float(x.abs().max()) / 254 * 1.001
again = serialize_torch_tensor(back, msg.compression)  # the reducer's path
assert again.dtype == msg.dtype
refused = 0
for bad in (msg.buffer[:-3], msg.buffer[:4] + b"\xff\xff\xff\x7f" * 2 + msg.buffer[12:]):
    m = type(msg)(); m.CopyFrom(msg); m.buffer = bad
    try:
        deserialize_torch_tensor(m)
    except ValueError:
        refused += 1
m = type(msg)(); m.CopyFrom(msg); m.dtype = "swarm:r2:int8:64"  # the revision before fp16 int4 scales
try:
    deserialize_torch_tensor(m)
except ValueError:
    refused += 1
snap = comp.snapshot()
assert refused == 3 and snap["parts_refused"] == 3, (refused, snap)
assert snap["bytes_sent"] == 2 * msg.ByteSize() and snap["bytes_received"] == msg.ByteSize(), snap
print("ok")
"""


@pytest.mark.timeout(60)
def test_codec_inside_hivemind_counts_and_refuses() -> None:
    assert_script_prints_ok(SCRIPT)
