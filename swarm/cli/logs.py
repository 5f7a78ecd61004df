"""Logging set-up for the CLI: rich on a terminal, plain lines otherwise; libp2p's chatter kept at WARNING."""

from __future__ import annotations

import logging
import sys

from rich.logging import RichHandler

NOISY_LOGGERS = ("libp2p", "multiaddr", "hypercorn", "async_service", "root")


def setup_logging(level: str = "INFO") -> None:
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=numeric, format=fmt, handlers=[handler], force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # libp2p logs through the root logger in places; keep our own loggers at the asked level.
    for name in ("swarm", "comms", "serving", "training"):
        logging.getLogger(name).setLevel(numeric)
