"""`python -m swarm.cli ...` is the `swarm` command."""

from swarm.cli import main

main()
