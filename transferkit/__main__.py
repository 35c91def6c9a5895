"""`python -m transferkit` and `torchrun -m transferkit`: the command line."""

from transferkit.cli import main

main()
