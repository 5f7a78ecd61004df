"""`swarm bench serve --swarm N`: routing across serving peers. N `swarm join --roles serve` processes on
127.0.0.1, one of them throttled (its engine made `throttle`x slower with `serving.slowdown_factor`), Poisson load
through the Python client at a rate of `load_fraction` of the peers' combined capacity, where one peer's capacity
is measured first, in this run, by the single-node bench's capacity search. Routing by predicted TTFT, random
routing and least outstanding requests (the standard load balancer's policy) run on the same requests, interleaved.

By default peers run with `serving.slo_refuse` off: they queue every request, so where a request runs is the
routing decision alone, as behind any load balancer. With `refusing_peers` they refuse what they predict they
would serve late and the client moves on at once: a refusal then tells random routing where not to go for the
price of one round trip, a loopback round trip here, tens of milliseconds or more of the TTFT budget on real links.

N peers share this machine's cores, so each stands in for a machine of its own: every engine step lasts
`base_slowdown`x its profiled time (a sleep fills the rest), so a peer uses about 1/base_slowdown of a core and
its speed does not depend on what else runs here. The single-peer capacity is measured with the same stretch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from serving.bench import BenchSettings, calibrate_slo
from serving.bench import _engine_probe as engine_probe
from serving.bench_capacity import capacity_search
from serving.bench_workload import BenchRequest, Mix, RequestRecord, make_requests, summarize
from serving.engine import Engine
from swarm.bench.local_swarm import LocalPeer, stop_all
from swarm.client import AsyncClient, GenerationRefused, NoPeerAvailable

POLICIES = ("ttft", "random", "least_loaded")
# Interactive-length requests: the routing decision, not one long prefill, should dominate each request's fate.
ROUTING_MIX = Mix("interactive", 128, 0.5, (32, 512), 32, 0.3, (16, 64))


def _single_node(settings: BenchSettings, base_slowdown: float, progress) -> tuple[Any, float, list]:
    """SLO targets and the capacity of one unthrottled peer on this machine (the single-node bench's search)."""
    probes: list[dict] = []
    config = settings.engine_config(slo=True).model_copy(update={"slowdown_factor": base_slowdown})
    with Engine(config) as engine:
        reqs = make_requests(settings.goodput_mix, settings.goodput_requests, 1.0, settings.seed + 1, 256)
        slo = calibrate_slo(engine, reqs, settings)
        mean_out = statistics.mean(r.max_new_tokens for r in reqs)
        start_rate = 1.0 / (slo.isolated_prefill_s + mean_out * slo.isolated_decode_s)  # one at a time
        progress("measuring one peer's capacity at SLO")
        probe = engine_probe(engine, settings, slo, probes, "single_node")
        capacity, _ = capacity_search(lambda rate: probe(rate)["slo_attainment"], start_rate,
                                      settings.probes_per_system)  # fmt: skip
    return slo, capacity, probes


async def _send(
    client: AsyncClient, req: BenchRequest, record: RequestRecord, slo: Any, started: float, served_by: list[str]
) -> None:
    await trio.sleep_until(started + req.arrival_s)
    record.start_s = time.perf_counter()
    # Past this, the answer can no longer meet both SLOs (TTFT <= target and mean TPOT <= target imply it ends
    # by then), so the client gives up and the peer frees its slot, as a user would close the stream.
    with trio.move_on_after(slo.ttft_s + (req.max_new_tokens - 1) * slo.tpot_s) as give_up:
        try:
            async for delta in client.stream(
                prompt_token_ids=req.prompt_ids, max_new_tokens=req.max_new_tokens, temperature=0.0,
                ttft_ms=1000 * slo.ttft_s, tpot_ms=1000 * slo.tpot_s,
            ):  # fmt: skip
                now = time.perf_counter()
                if record.ttft_s is None:
                    record.ttft_s = now - record.start_s
                record.token_times_s.extend([now] * len(delta.token_ids))
                record.num_tokens += len(delta.token_ids)
                if delta.peer_id not in served_by:
                    served_by.append(delta.peer_id)
        except (NoPeerAvailable, GenerationRefused):
            record.refused = record.ttft_s is None
    record.abandoned = give_up.cancelled_caught


def _by_peer(records: list[RequestRecord], served_by: list[list[str]], names: dict[str, str], slo: Any) -> dict:
    """Requests each peer answered (the first peer of a resumed answer) and how many of them met both SLOs."""
    out: dict[str, dict[str, int]] = {name: {"requests": 0, "met_slo": 0} for name in names.values()}
    for record, peers in zip(records, served_by, strict=True):
        if peers:
            entry = out.setdefault(names.get(peers[0], peers[0]), {"requests": 0, "met_slo": 0})
            entry["requests"] += 1
            entry["met_slo"] += record.meets(slo.ttft_s, slo.tpot_s, stalls=False)
    return out


async def _run_trace(
    client: AsyncClient, policy: str, reqs: list[BenchRequest], slo: Any, names: dict[str, str]
) -> dict:
    client.dispatch.routing = policy
    records = [RequestRecord() for _ in reqs]
    served_by: list[list[str]] = [[] for _ in reqs]
    wall_start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for req, record, peers in zip(reqs, records, served_by, strict=True):
            nursery.start_soon(_send, client, req, record, slo, started, peers)
    ends = [r.token_times_s[-1] for r in records if r.token_times_s]
    wall = (max(ends) if ends else time.perf_counter()) - wall_start
    summary = summarize(records, wall, slo.ttft_s, slo.tpot_s, stalls=False)
    return {**summary, "by_peer": _by_peer(records, served_by, names, slo)}


def _start_peers(
    workdir: Path, settings: BenchSettings, num_peers: int, base_slowdown: float, throttle: float, refuse: bool
) -> list[LocalPeer]:
    common = ["--roles", "serve", "--model", settings.model, "--heartbeat-s", "0.5", "--peer-timeout-s", "5",
              "--set", f"serving.num_threads={settings.threads or 1}",
              "--set", f"serving.max_batch_tokens={settings.max_batch_tokens}",
              "--set", f"serving.kv_cache_bytes={settings.kv_cache_bytes}",
              "--set", f"serving.slo_refuse={str(refuse).lower()}"]  # fmt: skip
    peers: list[LocalPeer] = []
    try:
        for i in range(num_peers):
            slowdown = base_slowdown * (throttle if i == num_peers - 1 else 1.0)
            extra = ["--set", f"serving.slowdown_factor={slowdown}"]
            bootstrap = ["--peer", peers[0].addr] if peers else []
            peers.append(LocalPeer(workdir, f"serve-{i}", [*common, *extra, *bootstrap]))
            if i == 0:
                peers[0].wait_ready(timeout_s=300)
        for peer in peers:
            peer.wait_ready(timeout_s=300)
    except BaseException:
        stop_all(peers)
        raise
    return peers


async def _compare(peers: list[LocalPeer], reqs: list[BenchRequest], slo: Any, repeats: int, progress) -> dict:
    results: dict[str, list[dict]] = {p: [] for p in POLICIES}
    client = AsyncClient(peers=[peers[0].addr], timeout_s=max(2 * slo.ttft_s, 1.0), stall_timeout_s=30)
    names = {p.peer_id: p.name + (" (throttled)" if i == len(peers) - 1 else "") for i, p in enumerate(peers)}
    async with client:
        await client.wait_for_servers(len(peers), timeout_s=60)
        # Untimed warm-up at the bench rate (connections, streams, every peer's latency correction), so that
        # the first measured pass does not pay for it.
        progress("warm-up pass")
        await _run_trace(client, "random", reqs[: max(len(reqs) // 4, 1)], slo, names)
        await trio.sleep(1.0)
        for rep in range(repeats):  # A B C, then C B A, ...: no policy always runs first
            for policy in POLICIES if rep % 2 == 0 else POLICIES[::-1]:
                progress(f"routing={policy}, pass {rep + 1}/{repeats}")
                results[policy].append(await _run_trace(client, policy, reqs, slo, names))
                await trio.sleep(1.0)  # let queues drain and announces refresh between runs
    return results


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def _ratio(summary: dict, key: str, baseline: str = "random") -> float | None:
    base = summary[baseline][key]
    return summary["ttft"][key] / base if base else None


def run_swarm_bench(
    *,
    quick: bool,
    num_peers: int = 3,
    throttle: float = 3.0,
    load_fraction: float = 0.6,
    base_slowdown: float = 6.0,
    refusing_peers: bool = False,
    model: str = "default-random",
    progress=None,
    requests: int | None = None,
    repeats: int | None = None,
    **single_node: Any,
) -> dict:  # fmt: skip
    """Run the routing bench; returns the bench JSON object (machine info is added by the caller). `requests`
    per pass, `repeats` passes per policy and `single_node` BenchSettings overrides default to the --quick or
    full sizes."""
    progress = progress or (lambda _msg: None)
    started = time.perf_counter()
    size = (
        {"goodput_requests": 10, "probes_per_system": 4, "probe_arrival_s": 8.0}  # 9 of 10 passes a probe
        if quick
        else {"goodput_requests": 40, "probes_per_system": 7, "probe_arrival_s": 20.0}
    )
    size.update(single_node)
    # TPOT is checked on the mean (vLLM's goodput): a client's view of token gaps through Python libp2p hosts
    # sharing two cores carries jitter no routing decision can remove; stall-free batching is the single-node
    # bench's subject.
    settings = BenchSettings.for_size(
        quick, model=model, threads=1, count_stalls=False, **{"goodput_mix": ROUTING_MIX, **size}
    )
    slo, capacity, single_probes = _single_node(settings, base_slowdown, progress)
    if capacity <= 0:
        raise RuntimeError("one peer met no SLO at any probed rate: nothing to route")
    combined = capacity * (num_peers - 1 + 1 / throttle)
    rate = load_fraction * combined
    requests = requests or (48 if quick else 160) * num_peers // 3
    reqs = make_requests(settings.goodput_mix, requests, rate, settings.seed + 2, 256)
    progress(f"starting {num_peers} serving peers")
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as workdir:
        peers = _start_peers(Path(workdir), settings, num_peers, base_slowdown, throttle, refusing_peers)
        try:
            runs = trio.run(_compare, peers, reqs, slo, repeats or (2 if quick else 3), progress)
        finally:
            stop_all(peers)
    summary = {
        p: {
            "goodput_req_s": _mean(r, "goodput_req_s"),
            "slo_attainment": _mean(r, "slo_attainment"),
            "refused": _mean(r, "refused"),
            "abandoned": _mean(r, "abandoned"),
            "runs": r,
        }
        for p, r in runs.items()
    }
    return {
        "bench": "serve-swarm",
        "config": {
            "num_peers": num_peers,
            "throttle": throttle,
            "load_fraction": load_fraction,
            "base_slowdown": base_slowdown,
            "model": model,
            "requests": requests,
            "peers_refuse_predicted_misses": refusing_peers,
            "mix": asdict(settings.goodput_mix),
            "threads_per_peer": settings.threads,
            "slo": asdict(slo),
        },
        "results": {
            "single_node_capacity_req_s": capacity,
            "combined_capacity_req_s": combined,
            "rate_req_s": rate,
            "single_node_probes": single_probes,
            "routing": summary,
            "bench_wall_s": time.perf_counter() - started,
        },
        "ratios": {
            "goodput_routing_vs_random": _ratio(summary, "goodput_req_s"),
            "attainment_routing_vs_random": _ratio(summary, "slo_attainment"),
            "goodput_routing_vs_least_loaded": _ratio(summary, "goodput_req_s", "least_loaded"),
            "attainment_routing_vs_least_loaded": _ratio(summary, "slo_attainment", "least_loaded"),
        },
    }
