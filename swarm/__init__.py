"""The swarm node: runtime, membership, role wiring, HTTP API, CLI and the public client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swarm-node")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
