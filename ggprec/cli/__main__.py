"""`python -m ggprec.cli`: the same command line as the `ggprec` script."""

from . import main

main()
