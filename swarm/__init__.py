"""The swarm node. Subpackages by responsibility: `runtime` (the node, its membership and roles), `gateway` (where
a request goes and how it is carried), `web` (the HTTP surface and dashboard), `cli` (the `swarm` command), `bench`
(swarm-level benches and the demo), `sim` (the large-swarm simulator). `swarm.client` is the public Python client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swarm-node")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
