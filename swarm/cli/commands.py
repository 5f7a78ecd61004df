"""The `swarm` command line: typer app and its sub-apps.

Each capability registers its commands from its own module (cli_node, cli_doctor, cli_serving, cli_training), so
this file only assembles them; it knows nothing about what the commands do.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="swarm",
    help="A peer-to-peer node that serves LLM generation and trains models with its peers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: each runs its baselines in the same run and reports ratios.")
model_app = typer.Typer(help="Models: export the embedded default as a checkpoint directory; train its weights.")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")


def _register_all() -> None:
    from swarm.cli import coschedule as cli_coschedule
    from swarm.cli import doctor as cli_doctor
    from swarm.cli import model as cli_model
    from swarm.cli import node as cli_node
    from swarm.cli import rl as cli_rl
    from swarm.cli import scale as cli_scale
    from swarm.cli import serving as cli_serving
    from swarm.cli import soak as cli_soak
    from swarm.cli import training as cli_training

    cli_node.register(app, bench_app)
    cli_doctor.register(app)
    cli_rl.register(app, bench_app)
    cli_serving.register(app, bench_app, model_app)
    cli_training.register(app, bench_app)
    cli_soak.register(bench_app)
    cli_coschedule.register(bench_app)
    cli_scale.register(bench_app)
    cli_model.register(model_app)


def main() -> None:
    _register_all()
    app()
