"""`python -m ggprec`: the same command line as the `ggprec` script."""

from .cli import main

main()
