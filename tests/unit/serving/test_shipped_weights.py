"""The embedded `default` is served with the weights the package ships (fp16 on disk, fp32 in memory); `default-random`
is the same network with its seeded weights; a missing weights file is a NOT_FOUND naming the way out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from protocols.errors import ErrorCode, ProtocolError
from serving import model as serving_model


def test_default_loads_the_shipped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random = serving_model.build_embedded_model("default-random")
    shipped = {k: (v * 0.5).to(torch.float16).contiguous() for k, v in random.hf_model.state_dict().items()}
    save_file(shipped, str(tmp_path / "default.safetensors"))
    monkeypatch.setattr(serving_model, "WEIGHTS_DIR", tmp_path)
    loaded = serving_model.load_model("default")
    assert loaded.model_id == "swarm-embedded-default" and random.model_id == "swarm-embedded-default-random-seed0"
    assert loaded.model_hash != random.model_hash
    state = loaded.hf_model.state_dict()
    assert all(torch.equal(state[k], shipped[k].float()) for k in shipped)
    assert loaded.tokenizer.eos_token_id == random.tokenizer.eos_token_id == 257


def test_missing_weights_name_the_seeded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_model, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ProtocolError) as err:
        serving_model.build_embedded_model("default")
    assert err.value.code == ErrorCode.NOT_FOUND and "default-random" in str(err.value)
