"""`python -m graphopt ...` runs the `graphopt` console script."""

from graphopt.app.cli import main

main()
