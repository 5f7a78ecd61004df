"""A discrete-event simulator of a large swarm that runs the project's own decision code (membership, gossip
periods, route sampling and ranking, NoLoCo grouping) on a virtual clock. See swarm/sim/bench.py."""
