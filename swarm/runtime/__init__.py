"""The node runtime and its roles: one trio loop owning the libp2p host, bounded gossip membership and its
periods, discovery, load answered on demand, the roles (serve, train, rl) with the arbiter and placement that
share the node's devices between them, their metrics, the typed config tree, the machine's description and the
doctor's checks. It knows the wire protocols and the engines it starts; it knows nothing about HTTP, the command
line or the benches."""
