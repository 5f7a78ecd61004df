"""`swarm rl warm-start` and `swarm bench rl`: the RL commands.

The warm start is cached by digest (base model, task set, settings) under ~/.cache/swarm/rl/warm-<digest> and
reused; the result is a normal checkpoint directory (`swarm join --model DIR`). Knows typer and the RL modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

rl_app = typer.Typer(help="RL experience sharing: warm start a model for the `rl` role.")
CACHE_DIR = Path.home() / ".cache" / "swarm" / "rl"


def cached_warm_start(model: str, model_seed: int, rl_cfg: Any, settings: Any, progress: Callable[[str], None],
                      cache_dir: Path = CACHE_DIR) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """The warm-started checkpoint for (model, tasks, settings): from the cache, or trained and cached now."""
    from serving.model import load_model, save_model
    from training.rl_tasks import TaskSet
    from training.rl_warmstart import warm_start

    tasks = TaskSet(rl_cfg.tasks)
    loaded = load_model(model, model_seed)
    key = json.dumps({"model": loaded.model_hash, "tasks": tasks.digest, "settings": dataclasses.asdict(settings)},
                     sort_keys=True)  # fmt: skip
    out = cache_dir / f"warm-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (out / "warm_start.json").is_file():
        return out, json.loads((out / "warm_start.json").read_text())
    stats = warm_start(loaded.hf_model, loaded.tokenizer, tasks, settings, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".warm-"))
    save_model(loaded, tmp)
    (tmp / "warm_start.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, stats


def warm_start_cmd(
    model: Annotated[str, typer.Option(help="'default', 'tiny' or a checkpoint dir to start from.")] = "default",
    lr: Annotated[float, typer.Option(min=0, help="AdamW learning rate.")] = 2e-3,
    max_steps: Annotated[int, typer.Option(min=1, help="Most supervised steps.")] = 300,
    reward_floor: Annotated[
        float, typer.Option(min=0, max=1, help="Stop once the probe's mean reward reaches this.")
    ] = 0.15,
    config: Annotated[Path | None, typer.Option("--config", help="Node config whose rl.tasks to use.")] = None,
) -> None:
    """Train the model supervised on task items (a range RL never uses) until it earns some reward; print its dir."""
    from swarm.runtime.config import load_config
    from training.rl_warmstart import WarmStartSettings

    cfg = load_config(config)
    settings = WarmStartSettings(
        max_steps=max_steps, reward_floor=reward_floor, max_new_tokens=cfg.rl.max_new_tokens, lr=lr
    )
    console = Console(stderr=True)
    out, stats = cached_warm_start(model, cfg.serving.model_seed, cfg.rl, settings, console.print)
    console.print(f"warm start: {stats['steps']} steps, probe reward {stats['probe']['mean']:.3f}")
    typer.echo(str(out))


def bench_rl(
    quick: Annotated[
        bool, typer.Option("--quick", help="Arms 8/0 and 4/4 + a lying peer (minutes on 2 cores).")
    ] = False,
    full: Annotated[bool, typer.Option("--full", help="Also 6/2, 2/6 and 4/4 trusting advisory rewards.")] = False,
    rounds: Annotated[int | None, typer.Option(min=2, help="Rounds per arm (default: 60 quick, 120 full).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results JSON here.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write the reward curves (PNG) here.")] = None,
    eval_items: Annotated[int, typer.Option(min=0, help="Fixed greedy eval set size.")] = 64,
    model: Annotated[
        str, typer.Option(help="Embedded model every arm starts from ('tiny' fits 2 busy cores).")
    ] = "tiny",
    warm_lr: Annotated[float, typer.Option(min=0, help="Learning rate of the supervised warm start.")] = 1e-2,
    lr: Annotated[float, typer.Option(min=0, help="Every peer's rl.lr (the LoRA adapter's learning rate).")] = 3e-3,
    seeds: Annotated[
        int, typer.Option(min=1, max=16, help="Seeds; each runs every arm, the figures are means over them.")
    ] = 2,
    workdir: Annotated[Path | None, typer.Option(help="Keep logs here (default: a temp dir).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override an rl field on every peer: rl.lr=0.01.")
    ] = None,
) -> None:
    """N=4 `swarm join --roles rl` peers per arm, one shared cached warm start, paired identities and seeds."""
    from swarm.bench.benchio import finish_bench, machine_info
    from swarm.bench.rl_bench import FULL_ARMS, QUICK_ARMS, ArmRun, make_identities, merge_seeds, plot_curves, ratios
    from swarm.runtime.config import load_config
    from training.rl_warmstart import WarmStartSettings

    console = Console()
    overrides = [f"rl.lr={lr}", *(overrides or [])]
    cfg = load_config(None, overrides=overrides)
    rounds = rounds or (120 if full else 60)
    # The whole step budget (floor 1.0): tiny stopped at a floor samples as well as it answers greedily (0.16 both
    # at 300 steps) and RL has nothing to sharpen; after 1200 steps greedy 0.27 vs sampled 0.20 on the eval set.
    settings = WarmStartSettings(max_steps=1200, reward_floor=1.0, probe_every=100,
                                 max_new_tokens=cfg.rl.max_new_tokens, lr=warm_lr)  # fmt: skip
    start = time.monotonic()
    warm_dir, warm = cached_warm_start(model, 0, cfg.rl, settings, console.print)
    from serving.model import load_checkpoint

    model_hash = load_checkpoint(str(warm_dir)).model_hash
    base = workdir or Path(tempfile.mkdtemp(prefix="swarm-bench-rl-"))
    make_identities(base / "keys")
    arms = FULL_ARMS if full else QUICK_ARMS
    runs: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    with console.status("bench rl") as spinner:
        for seed in range(seeds):  # seed-major: an interrupted run still holds complete pairs
            for arm in arms:
                name = f"seed{seed}-" + arm.name.replace("/", "_").replace(" ", "_")
                run = ArmRun(arm, base / name, warm_dir, model_hash, rounds, eval_items, overrides, seed)
                res = run.run(base / "keys", spinner.update)
                runs[arm.name].append(res)
                console.print(f"seed {seed}, arm {arm.name}: cumulative reward {res['cumulative_reward']:.3f} "
                              f"in {res['seconds']:.0f} s")  # fmt: skip
    results = {name: merge_seeds(per_seed) for name, per_seed in runs.items()}
    result = {"bench": "rl", "quick": quick, "full": full, "rounds": rounds, "seeds": seeds, "peers": 4, "model": model,
              "warm_start": {"dir": str(warm_dir), **warm}, "results": results, "ratios": ratios(results),
              "config": cfg.rl.model_dump(mode="json", exclude={"checkpoint_dir", "log_file"}),
              "seconds": round(time.monotonic() - start, 1), "machine": machine_info()}  # fmt: skip
    if plot_path is not None:
        plot_curves(results, plot_path)
    finish_bench(result, json_path, console)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.add_typer(rl_app, name="rl")
    rl_app.command("warm-start")(warm_start_cmd)
    bench_app.command("rl")(bench_rl)
