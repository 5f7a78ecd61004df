"""`swarm bench serve --base-url URL --model NAME`: the serving bench's seeded workload against any
OpenAI-compatible endpoint (a swarm gateway, vLLM, llama.cpp's server...), measured from the client's side.

Requests go to `/completions` as token-id prompts (the workload's tokens, so every server computes the same
prompts), streamed, with `ignore_eos` so every server generates the lengths the workload asks for. One SSE chunk
that carries a choice is one token arrival (servers stream a chunk per token; a trailing text-only chunk beyond
the usage's token count is dropped). A server's prefix cache cannot be
reset from here, so each capacity probe salts its prompts' first token: no probe finds an earlier one's prompts
cached, and lengths stay those of the seeded workload. Outputs: saturation throughput and capacity at SLO under
both TPOT definitions, in the single-node bench's result shape. Knows HTTP and SSE; nothing about engines.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from dataclasses import asdict, replace

import httpx

from serving.bench import START_LOAD, BenchSettings, Slo, probe_requests
from serving.bench_capacity import SystemSearch
from serving.bench_workload import BenchRequest, RequestRecord, make_requests, summarize

CONNECT_TIMEOUT_S = 10.0
VOCAB = 256  # the workload's token ids: bytes, which every byte-level or larger vocabulary has


class HttpServer:
    """One OpenAI-compatible endpoint: base URL (ending in /v1 or not), model name, optional API key.

    `text_prompts`: for servers that take only text (llama-cpp-python's): each token id is sent as one printable
    ASCII character, which a byte-level vocabulary without merges tokenizes back to one token, so the prompt keeps
    its length (its ids differ, which costs a dense model nothing). `avoid_token_ids`: for servers without
    `ignore_eos`, a logit bias of -100 on those ids (the EOS tokens) does the same.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        text_prompts: bool = False,
        avoid_token_ids: list[int] | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base + "/completions" if base.endswith("/v1") else base + "/v1/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.text_prompts = text_prompts
        self.avoid_token_ids = avoid_token_ids or []

    def body(self, req: BenchRequest) -> dict:
        body = {
            "model": self.model,
            "prompt": _ascii(req.prompt_ids) if self.text_prompts else req.prompt_ids,
            "max_tokens": req.max_new_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        if self.avoid_token_ids:
            body["logit_bias"] = {str(t): -100 for t in self.avoid_token_ids}
        return body

    def stream_one(self, client: httpx.Client, req: BenchRequest, record: RequestRecord, deadline: float) -> None:
        """Send `req`, timestamp every token chunk into `record`; an HTTP error or a dead stream is a refusal
        when nothing arrived, and an abandoned answer otherwise."""
        record.start_s = time.perf_counter()
        usage_tokens = None
        try:
            timeout = httpx.Timeout(max(deadline - record.start_s, 1.0), connect=CONNECT_TIMEOUT_S)
            with client.stream("POST", self.url, json=self.body(req), headers=self.headers, timeout=timeout) as r:
                if r.status_code != 200:
                    r.read()
                    record.refused = True
                    return
                for line in r.iter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    usage_tokens = _take_chunk(json.loads(line[5:]), record) or usage_tokens
                    if time.perf_counter() > deadline:
                        record.abandoned = True
                        return
        except (httpx.HTTPError, ValueError):
            record.refused = record.ttft_s is None
            record.abandoned = not record.refused
            return
        if usage_tokens is not None:
            # A server may send a text-only chunk (held-back bytes flushed at the end) beside its last token's.
            record.num_tokens = usage_tokens
            del record.token_times_s[max(usage_tokens, 1) :]


def llama_cpp_server(base_url: str, eos_token_ids: list[int]) -> tuple[HttpServer, str]:
    """An `HttpServer` for a llama.cpp server at `base_url`, and which kind it is. llama.cpp's own `llama-server`
    (it answers `GET /props`) takes token-id prompts and `ignore_eos` and batches requests in its slots, so it gets
    the same bodies as any server; llama-cpp-python's server takes text only and has no `ignore_eos`."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        native = httpx.get(root + "/props", timeout=CONNECT_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        native = False
    if native:
        return HttpServer(base_url, "default"), "llama-server"
    return HttpServer(base_url, "default", text_prompts=True, avoid_token_ids=eos_token_ids), "llama-cpp-python"


def _ascii(token_ids: list[int]) -> str:
    """One printable ASCII character per token id (95 of them: space to tilde)."""
    return "".join(chr(32 + t % 95) for t in token_ids)


def _take_chunk(chunk: dict, record: RequestRecord) -> int | None:
    """Record the token arrival a chunk carries; returns the completion tokens of a usage chunk."""
    now = time.perf_counter()
    usage = chunk.get("usage")
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason") is None or choice.get("text"):
            if record.ttft_s is None:
                record.ttft_s = now - record.start_s
            record.token_times_s.append(now)
            record.num_tokens += 1
    return int(usage["completion_tokens"]) if isinstance(usage, dict) and "completion_tokens" in usage else None


def run_http_trace(server: HttpServer, requests: list[BenchRequest], timeout_s: float) -> tuple[list, float]:
    """Send each request at its arrival time (a thread each, so slow streams never delay later arrivals); wait
    for all or the deadline. Returns records and wall time (to the last token)."""
    records = [RequestRecord() for _ in requests]
    limits = httpx.Limits(max_connections=len(requests) + 1, max_keepalive_connections=len(requests) + 1)
    with httpx.Client(limits=limits) as client:
        start = time.perf_counter()
        deadline = start + timeout_s
        threads = []
        for req, record in zip(requests, records, strict=True):
            delay = start + req.arrival_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=server.stream_one, args=(client, req, record, deadline), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(deadline - time.perf_counter(), 0.0) + CONNECT_TIMEOUT_S)
    ends = [r.token_times_s[-1] for r in records if r.token_times_s]
    return records, (max(ends) if ends else time.perf_counter()) - start


def salted(requests: list[BenchRequest], salt: int) -> list[BenchRequest]:
    """The same requests with each prompt's first token shifted by `salt`: same lengths, no shared prefix with
    the unsalted prompts (a block's hash chains from the first token)."""
    return [replace(r, prompt_ids=[(r.prompt_ids[0] + salt) % VOCAB, *r.prompt_ids[1:]]) for r in requests]


def calibrate_http(server: HttpServer, settings: BenchSettings) -> Slo:
    """The single-node bench's SLO formula against this server: isolated prefill of a median-length prompt and
    isolated decode step, each of three runs on a prompt of its own (a prefix cache cannot flatter them)."""
    reqs = make_requests(settings.goodput_mix, settings.goodput_requests, 1.0, settings.seed + 1, VOCAB)
    median = sorted(reqs, key=lambda r: len(r.prompt_ids))[len(reqs) // 2]
    prefill, decode = [], []
    for salt in (1, 2, 3):
        base = salted([median], salt)[0]
        (rec,), _ = run_http_trace(server, [replace(base, arrival_s=0.0, max_new_tokens=1)], 120)
        (dec,), _ = run_http_trace(server, [BenchRequest(0.0, base.prompt_ids[:32], 32)], 120)
        if rec.ttft_s is None or dec.tpot_s is None:
            raise RuntimeError(f"{server.url} answered no tokens to a calibration request")
        prefill.append(rec.ttft_s)
        decode.append(dec.tpot_s)
    p_s, d_s = statistics.median(prefill), statistics.median(decode)
    return Slo(settings.ttft_slo_factor * p_s, settings.tpot_slo_factor * d_s, p_s, d_s)


def http_saturation(server: HttpServer, settings: BenchSettings) -> dict:
    """Output tok/s with the decode-heavy requests all queued at t=0 (after an untimed warm-up)."""
    reqs = make_requests(settings.saturation_mix, settings.saturation_requests, math.inf, settings.seed, VOCAB)
    run_http_trace(server, salted(reqs[:8], 7), 300)
    records, wall = run_http_trace(server, reqs, 900)
    return summarize(records, wall, math.inf, math.inf)


def http_capacity(server: HttpServer, settings: BenchSettings, slo: Slo, name: str) -> dict:
    """Capacity at SLO under both TPOT definitions; probes salted one by one."""
    demand_s = (
        slo.isolated_prefill_s
        + statistics.mean(r.max_new_tokens for r in probe_requests(settings, 1.0)) * slo.isolated_decode_s / 2
    )
    start_rate = START_LOAD / demand_s
    floor = start_rate / 2**settings.search_halvings
    search = SystemSearch(
        start_rate, settings.probes_per_system, min_rate=floor, max_per_definition=settings.probes_per_definition
    )
    probes: list[dict] = []
    while (rate := search.next_rate()) is not None:
        reqs = salted(probe_requests(settings, rate), 11 + len(probes))
        # A server far over its capacity queues for long: what is unanswered a while after the last arrival
        # is a miss, and the probe ends (a bounded search).
        records, wall = run_http_trace(server, reqs, reqs[-1].arrival_s + settings.probe_arrival_s)
        summary = summarize(records, wall, slo.ttft_s, slo.tpot_s, settings.count_stalls)
        probes.append({"system": name, "rate_req_s": rate, **summary})
        search.record(rate, summary)
    by_definition = search.capacities()
    main = "with_stalls" if settings.count_stalls else "mean_tpot"
    return {"capacity_req_s": by_definition[main], "by_definition": by_definition, "probes": probes}


def run_http_bench(server: HttpServer, settings: BenchSettings, name: str = "server", slo: Slo | None = None) -> dict:
    """The bench against one endpoint, in the single-node result's shape. `slo`: targets to hold it to (another
    system's, to compare on equal terms); by default calibrated against this server."""
    started = time.perf_counter()
    slo = slo or calibrate_http(server, settings)
    sat = http_saturation(server, settings)
    cap = http_capacity(server, settings, slo, name)
    config = asdict(settings)
    config.update(base_url=server.url, served_model=server.model, slo_targets=asdict(slo))
    goodput = {
        "slo": asdict(slo),
        "capacity_req_s": {name: cap["capacity_req_s"]},
        "capacity_req_s_by_definition": {name: cap["by_definition"]},
        "probes": cap["probes"],
    }
    return {
        "bench": "serve-http",
        "config": config,
        "results": {"saturation": {name: sat}, "goodput": goodput, "bench_wall_s": time.perf_counter() - started},
        "ratios": {},
    }


def add_comparison(result: dict, other: dict, name: str) -> None:
    """Merge `other` (a `run_http_bench` result held to `result`'s SLOs) into the single-node `result` as system
    `name`, with the engine's throughput and capacity ratios against it."""
    sat, good = result["results"]["saturation"], result["results"]["goodput"]
    sat[name] = other["results"]["saturation"][name]
    theirs = other["results"]["goodput"]
    good["capacity_req_s"][name] = theirs["capacity_req_s"][name]
    good["capacity_req_s_by_definition"][name] = theirs["capacity_req_s_by_definition"][name]
    good["probes"].extend(theirs["probes"])
    engine_caps = good["capacity_req_s_by_definition"]["engine"]
    their_caps = theirs["capacity_req_s_by_definition"][name]
    ratios = result["ratios"]
    ratios[f"throughput_vs_{name}"] = sat["engine"]["output_tok_s"] / sat[name]["output_tok_s"] if sat[name][
        "output_tok_s"] else None  # fmt: skip
    for definition, suffix in (("with_stalls", ""), ("mean_tpot", "_mean_tpot")):
        theirs_cap = their_caps[definition]
        ratios[f"goodput_vs_{name}{suffix}"] = engine_caps[definition] / theirs_cap if theirs_cap > 0 else None
    result["config"][f"{name}_server"] = other["config"]["base_url"]
