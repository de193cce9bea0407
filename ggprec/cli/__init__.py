"""The `ggprec` command line: a thin Click shell over the library modules (`shell`: the group, errors and
shared options; one module of commands per area: `models`, `measure`, `accuracy`, `advise`).

Heavy modules (llama_cpp, numpy, rich) are imported inside the commands that need them so that
`ggprec --help` and `ggprec inspect` start fast. Every GgprecError becomes one line on stderr and
exit code 2.
"""

from . import accuracy, advise, distributed, measure, models  # noqa: F401  (each registers its commands on `main`)
from .shell import EXIT_BAD_INPUT, main

__all__ = ["EXIT_BAD_INPUT", "main"]
