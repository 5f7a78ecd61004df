"""Two `swarm join --roles train` nodes fine-tune a tiny Qwen3 checkpoint directory (random weights, a BPE
tokenizer learnt in code, EOS but no BOS) on prompt/completion records; the checkpoint they write serves as it is
with `swarm generate --model DIR` and stops on EOS after the completion it was taught."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.config import ServingConfig
from serving.engine import Engine
from serving.request import GenerateParams
from tests.integration.nodes import wait_until
from tests.integration.tiny_checkpoints import bpe_tokenizer, save_tiny_qwen3

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]

EXAMPLES = [("Q: What is the capital of France?\nA:", " Paris."), ("Q: What is two plus two?\nA:", " Four.")]
TOTAL_STEPS = 80  # enough for both answers to be learnt whatever rounds the averaging timing cuts short


def fine_tune_args(base: Path, data: Path, ckpt: Path) -> tuple[str, ...]:
    sets = {
        "model": base, "data_path": data, "checkpoint_dir": ckpt, "inner_steps": 10, "total_steps": TOTAL_STEPS,
        "warmup_steps": 2, "inner_lr": 0.01, "seq_len": 24, "batch_size": 8, "eval_batches": 1,
        "start_peers": 1,  # started together: the first step waits for the other node
    }  # fmt: skip
    args = ["--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "6"]
    for key, value in sets.items():
        args += ["--set", f"training.{key}={value}"]
    return tuple(args)


def _averaging_bytes(http: str) -> float:
    match = re.search(r'swarm_bytes_out_total\{channel="averaging"\} (\S+)', httpx.get(f"{http}/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_two_train_nodes_fine_tune_a_checkpoint_that_then_stops_on_eos(
    start_node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One torch thread per process: with more, a loaded 2-core machine makes every tiny step wait on the others.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = save_tiny_qwen3(tmp_path / "base", bpe_tokenizer([p + c for p, c in EXAMPLES] * 4))
    data = tmp_path / "finetune.jsonl"  # the two records, repeated: enough windows for every data shard
    records = [json.dumps({"prompt": p, "completion": c}) for p, c in EXAMPLES] * 40
    data.write_text("\n".join(records) + "\n")
    a = start_node("a", *fine_tune_args(base, data, tmp_path / "ca"))
    b = start_node("b", *fine_tune_args(base, data, tmp_path / "cb"), "--peer", a.addr)

    def steps() -> list[int]:
        return [int(r["training"]["step"] or 0) for r in a.peers() if "train" in r["roles"]]

    wait_until(lambda: len(steps()) == 2 and min(steps()) >= TOTAL_STEPS, timeout_s=180, interval_s=1.0)
    assert _averaging_bytes(a.http) > 0 and _averaging_bytes(b.http) > 0  # they fine-tuned together
    for node in (a, b):  # both leave at once; each writes its shutdown checkpoint
        node.signal(signal.SIGTERM)
    for node in (a, b):
        assert node.proc.wait(timeout=60) == 0, node.log_tail()

    newest = sorted((tmp_path / "ca").glob("round-*"))[-1]
    (prompt, completion), (other_prompt, other_completion) = EXAMPLES
    out = subprocess.run(
        [sys.executable, "-m", "swarm", "generate", prompt, "--model", str(newest), "--max-new-tokens", "16",
         "--device", "cpu", "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert (result["text"], result["finish_reason"]) == (completion, "stop"), result
    # The other prompt gets its own completion: the model learnt a mapping, not one answer (engine in this process).
    with Engine(ServingConfig(model=str(newest), device="cpu")) as engine:
        other = engine.generate(GenerateParams(prompt=other_prompt, max_new_tokens=16))
    assert (other.text, other.finish_reason) == (other_completion, "stop")
