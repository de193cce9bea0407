"""The `ggprec` command line: a thin Click shell over the library modules (`shell`: the group, errors and
shared options; one module of commands per area: `models`, `measure`, `accuracy`, `advise`).

Heavy modules (llama_cpp, numpy, rich) are imported inside the commands that need them so that
`ggprec --help` and `ggprec inspect` start fast. Every GgprecError becomes one line on stderr and
exit code 2.
"""

import os

# numpy's OpenBLAS starts a worker thread per core that spins for ~0.1 s after the import and after each
# BLAS call (~60 ms of CPU on 2 cores). ggprec's numpy work is element-wise with tiny matrices, while
# llama.cpp's threads (quantize, eval, run) want every core: one BLAS thread for the CLI's processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import accuracy, advise, distributed, measure, models  # noqa: E402, F401  (each registers its commands on `main`)
from .shell import EXIT_BAD_INPUT, main  # noqa: E402

__all__ = ["EXIT_BAD_INPUT", "main"]
