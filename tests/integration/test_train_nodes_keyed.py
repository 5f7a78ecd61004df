"""Two `swarm join --roles train` nodes of a private swarm (`--swarm-key`) average through a keyed averaging stack;
when one node's averaging process is killed with SIGKILL, its train role starts a new one that rejoins and
averages again (its averaging bytes grow by at least a round's tensor parts), and nobody was refused."""

from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from comms.pnet import write_swarm_key
from tests.integration.nodes import wait_until
from training.config import TrainingConfig
from training.model import load_train_model

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(420)]

# started together: the first step waits for the other node (a node alone would not wait for a group)
TRAIN = ("--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "6",
         "--set", "training.inner_steps=5", "--set", "training.total_steps=100000",
         "--set", "training.max_corpus_bytes=100000", "--set", "training.eval_batches=1",
         "--set", "training.start_peers=1")  # fmt: skip


def metric(http: str, name: str, label: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    match = re.search(rf"{name}\{{{label}\}} (\S+)", text)
    return float(match.group(1)) if match else 0.0


def rounds(node) -> list[int]:  # type: ignore[no-untyped-def]
    return [r["training"]["round"] for r in node.peers() if "train" in r["roles"]]


def averaging_child(pid: int) -> int:
    """The pid of the `comms.hivemind_worker` child of process `pid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"comms.hivemind_worker" in cmdline:
            return int(entry)
    raise AssertionError(f"no averaging process under {pid}")


def test_keyed_nodes_average_and_a_killed_averager_rejoins(start_node, tmp_path: Path) -> None:
    key = tmp_path / "swarm.key"
    write_swarm_key(key)
    keyed = (*TRAIN, "--swarm-key", str(key))
    a = start_node("a", *keyed, "--set", f"training.checkpoint_dir={tmp_path / 'ca'}")
    b = start_node("b", *keyed, "--peer", a.addr, "--set", f"training.checkpoint_dir={tmp_path / 'cb'}")
    wait_until(lambda: len(rounds(b)) == 2 and min(rounds(b)) >= 2, timeout_s=150, interval_s=1.0)
    sent_before = metric(b.http, "swarm_bytes_out_total", 'channel="averaging"')
    assert sent_before > 0

    os.killpg(averaging_child(b.proc.pid), signal.SIGKILL)  # the worker, its DHT and p2pd
    # a new hivemind process (DHT and p2pd) starts within its 60 s start-up deadline, after the step in progress
    wait_until(lambda: "averaging process restarted" in b.log_tail(200_000), timeout_s=150, interval_s=0.5)
    sent_at_restart = metric(b.http, "swarm_bytes_out_total", 'channel="averaging"')
    assert sent_at_restart >= sent_before  # counts carry over the restart
    start_round = min(rounds(b))
    wait_until(lambda: min(rounds(b)) >= start_round + 3, timeout_s=120, interval_s=1.0)

    # Two peers: each sends the other the half of the fp16 pseudo-gradient the other reduces, once per round.
    numel = sum(p.numel() for p in load_train_model(TrainingConfig().model).model.parameters())
    half_round_bytes = math.ceil(numel / 2) * 2
    assert metric(b.http, "swarm_bytes_out_total", 'channel="averaging"') - sent_at_restart >= half_round_bytes
    for node in (a, b):
        text = httpx.get(f"{node.http}/metrics", timeout=5).text
        assert 'swarm_refused_messages_total{code="AVERAGING_SWARM_KEY"} 0.0' in text
        node.signal(signal.SIGTERM)
        assert node.proc.wait(timeout=15) == 0
