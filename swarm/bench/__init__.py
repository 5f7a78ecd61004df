"""Swarm-level benches and the demo: real `swarm join` processes on 127.0.0.1 (local swarms, soak, routing,
RL sharing, scale) measured from outside, and their shared progress bars and reports. Nothing in a running node
imports this package."""
