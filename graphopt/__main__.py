"""`python -m graphopt ...` runs the `graphopt` console script."""

from graphopt.cli import main

main()
