"""Round-trip error bounds and exact byte counts of every tensor codec."""

from __future__ import annotations

import pytest
import torch

from comms.codecs import CODEC_NAMES, EncodedTensor, ErrorFeedback, make_codec
from protocols.errors import ErrorCode, ProtocolError

SHAPES = [(1,), (7,), (64,), (65,), (3, 50), (2, 3, 129)]


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_within_stated_error_and_exact_bytes(name: str, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(hash((name, shape)) % 2**31)
    x = torch.randn(shape, generator=gen) * 3.0
    codec = make_codec(name, block_size=64)
    enc = codec.encode(x)
    assert enc.nbytes == codec.payload_nbytes(x.numel())
    out = codec.decode(enc)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert bool(((out - x).abs() <= codec.max_abs_error(x)).all())


@pytest.mark.parametrize(
    ("name", "numel", "nbytes"),
    [
        ("fp32", 100, 400),
        ("fp16", 100, 200),
        ("bf16", 100, 200),
        ("int8", 100, 2 * 4 + 100),
        ("int4", 100, 2 * 2 + 50),  # fp16 scales
        ("int4", 129, 3 * 2 + 65),
        ("int8", 64, 4 + 64),
        ("int2", 100, 2 * 2 + 25),  # four 2-bit codes per byte, fp16 magnitudes
        ("int2", 129, 3 * 2 + 33),
    ],
)
def test_payload_sizes_are_exact(name: str, numel: int, nbytes: int) -> None:
    codec = make_codec(name, block_size=64)
    assert codec.payload_nbytes(numel) == nbytes
    assert codec.encode(torch.ones(numel)).nbytes == nbytes


def test_int4_bound_is_tight_enough_to_mean_something() -> None:
    x = torch.linspace(-7.0, 7.0, 64)
    codec = make_codec("int4", block_size=64)
    # a block whose values sit on the grid round-trips exactly
    assert torch.equal(codec.decode(codec.encode(x.round())), x.round())
    # and a generic block errs by at most half a step of absmax/7 (its fp16 scale rounded up: 2^-10 more)
    y = torch.randn(64)
    err = (codec.decode(codec.encode(y)) - y).abs().max()
    assert float(err) <= float(y.abs().max() / 7 / 2) * (1 + 2**-10) * 1.0001


@pytest.mark.parametrize("magnitude", [1e-9, 1e-6, 1e-3, 1.0, 1e4, 1e7])
def test_int4_fp16_scales_keep_the_bound_from_subnormal_to_clamped(magnitude: float) -> None:
    codec = make_codec("int4", block_size=64)
    x = torch.randn(640, generator=torch.Generator().manual_seed(3)) * magnitude
    out = codec.decode(codec.encode(x))
    assert bool(((out - x).abs() <= codec.max_abs_error(x)).all())
    if magnitude <= 1e4:  # no clamp: the absmax of every block survives within half a step
        blocks, back = x.reshape(-1, 64), out.reshape(-1, 64)
        assert bool((back.abs().amax(1) >= blocks.abs().amax(1) - codec.max_abs_error(x).reshape(-1, 64)[:, 0]).all())
    else:  # absmax/7 beyond fp16's range: values clamp at 7 * 65504, as the bound says
        assert float(out.abs().max()) <= 7 * 65504.0


def test_int2_is_ternary_with_the_mean_magnitude_above_the_threshold() -> None:
    codec = make_codec("int2", block_size=8)
    x = torch.tensor([4.0, -2.0, 0.5, 0.0, -0.25, 3.0, -1.0, 0.25])  # mean magnitude 1.375: threshold 0.9625
    out = codec.decode(codec.encode(x))
    m = (4.0 + 2.0 + 3.0 + 1.0) / 4  # the values above the threshold
    assert torch.equal(out, torch.tensor([m, -m, 0.0, 0.0, 0.0, m, -m, 0.0]))


def test_zero_tensor_and_constant_blocks() -> None:
    for name in CODEC_NAMES:
        codec = make_codec(name)
        assert torch.equal(codec.decode(codec.encode(torch.zeros(130))), torch.zeros(130))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_refuses_truncated_wrong_codec_and_non_finite(name: str) -> None:
    codec = make_codec(name)
    enc = codec.encode(torch.randn(100))
    with pytest.raises(ProtocolError) as err:
        codec.decode(EncodedTensor(enc.codec, enc.shape, enc.payload[:-1]))
    assert err.value.code == ErrorCode.MALFORMED and err.value.field == "payload"
    with pytest.raises(ProtocolError):
        codec.decode(EncodedTensor("other", enc.shape, enc.payload))
    with pytest.raises(ProtocolError):
        codec.encode(torch.tensor([1.0, float("nan")]))


def test_decoded_nan_payload_is_refused() -> None:
    codec = make_codec("fp32")
    bad = EncodedTensor("fp32", (2,), torch.tensor([1.0, float("inf")]).numpy().tobytes())
    with pytest.raises(ProtocolError):
        codec.decode(bad)


def test_unknown_codec_names_the_field() -> None:
    with pytest.raises(ProtocolError) as err:
        make_codec("int3")
    assert err.value.field == "codec"


def test_error_feedback_carries_the_residual() -> None:
    codec = make_codec("int4")
    ef = ErrorFeedback(codec)
    x = torch.randn(256, generator=torch.Generator().manual_seed(1))
    total_sent = torch.zeros(256)
    rounds = 20
    for _ in range(rounds):
        total_sent += codec.decode(ef.encode("w", x))
    # with feedback, the sum of what was sent equals the sum of inputs up to one residual
    assert torch.allclose(total_sent + ef.residual("w"), x * rounds, atol=1e-4)
    plain = codec.decode(codec.encode(x)) * rounds
    assert (total_sent - x * rounds).abs().max() < (plain - x * rounds).abs().max()
