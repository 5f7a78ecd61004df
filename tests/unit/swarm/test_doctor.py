"""`swarm doctor`'s pieces without a network: multiaddr parts, busy ports found by binding a real socket, and the
clock-skew verdicts."""

from __future__ import annotations

import socket

from swarm.runtime.config import load_config
from swarm.runtime.doctor import SKEW_FAIL_S, SKEW_WARN_S, Endpoint, check_ports, failed, judge_skew

PEER = "12D3KooWD49UDAZMZq8aXpB9zfjCV6t1szvenRf4SWJrdgy4WAgq"


def test_endpoint_parts() -> None:
    end = Endpoint.parse(f"/ip4/10.0.0.5/tcp/4001/p2p/{PEER}")
    assert (end.host, end.port, end.peer_id, end.loopback) == ("10.0.0.5", 4001, PEER, False)
    assert Endpoint.parse("/dns4/node.example/tcp/443").host == "node.example"
    assert Endpoint.parse("/ip6/::1/tcp/1").loopback
    assert Endpoint.parse("/ip4/1.2.3.4/udp/1/quic") is None
    assert Endpoint.parse("not an address") is None


def test_busy_ports_fail_and_free_ones_pass() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        config = load_config(flags={"network.listen": [f"/ip4/127.0.0.1/tcp/{taken}"], "node.http": "127.0.0.1:0"})
        findings = check_ports(config)
    assert [(f.check, f.status) for f in findings] == [(f"port listen /ip4/127.0.0.1/tcp/{taken}", "fail")]
    assert str(taken) in findings[0].detail and "ss -ltnp" in findings[0].fix
    assert failed(findings)
    free = load_config(flags={"network.listen": [f"/ip4/127.0.0.1/tcp/{taken}"]})  # released on leaving the block
    assert [f.status for f in check_ports(free)] == ["ok"]


def test_clock_skew_verdicts() -> None:
    assert judge_skew({}, 5.0).status == "warn"
    assert judge_skew({"a": 0.2, "b": -0.4}, 5.0).status == "ok"
    warn = judge_skew({"a": 0.1, "peer-slow": -(SKEW_WARN_S + 1)}, 5.0)
    assert warn.status == "warn" and "-2.00 s" in warn.detail and "NTP" in warn.fix
    assert judge_skew({"a": SKEW_FAIL_S + 1}, 5.0).status == "fail"
