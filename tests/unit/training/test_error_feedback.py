"""Error feedback on the exchange: what int4 lost from a fragment is sent with the next exchange of it."""

from __future__ import annotations

import torch

from comms.codecs import make_codec
from training.trainer import CodecFeedback


def test_what_the_codec_lost_is_sent_next_time() -> None:
    codec = make_codec("int4", 64)
    feedback = CodecFeedback(codec)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    delivered = torch.zeros(1000)
    rounds = 12
    for _ in range(rounds):
        sent, residual = feedback.add(0, x)
        feedback.keep(0, residual)
        delivered += codec.decode(codec.encode(sent))
    # what arrived over all rounds equals what was meant, up to the one residual still held
    assert torch.allclose(delivered + residual, x * rounds, atol=1e-4)
    plain = codec.decode(codec.encode(x)) * rounds
    assert (delivered - x * rounds).abs().max() < 0.5 * (plain - x * rounds).abs().max()


def test_a_residual_is_kept_per_fragment_and_only_when_kept() -> None:
    feedback = CodecFeedback(make_codec("int4", 64))
    a = torch.linspace(-1.0, 1.0, 128)
    sent, residual = feedback.add(0, a)
    assert torch.equal(sent, a) and residual.abs().max() > 0
    # not kept (the exchange failed): the next send of fragment 0 carries nothing extra
    assert torch.equal(feedback.add(0, a)[0], a)
    feedback.keep(0, residual)
    assert torch.allclose(feedback.add(0, a)[0], a + residual)
    assert torch.equal(feedback.add(1, a)[0], a)  # another fragment has its own residual
