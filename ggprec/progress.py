"""The one progress callback type of long library calls (quantize, evaluate, compare, sensitivity).

`progress(stage, done, total)`: `stage` says what is being worked on (a tensor name while quantizing,
"reference" or "candidate" while evaluating, a step of a comparison, a sensitivity group), `done` of
`total` units of that stage are finished. Callers (the CLI) decide how to show it; the library never
prints progress itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Progress = Callable[[str, int, int], None]


@contextlib.contextmanager
def terminal_bar(title: str) -> Iterator[Progress]:
    """A Progress that draws one rich progress bar on stderr (stdout stays clean for --json), for the
    CLI; the bar is removed when the block ends, however it ends, so an error stays one line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              console=Console(stderr=True), transient=True)
    task = bar.add_task(title, total=None)

    def show(stage: str, done: int, total: int) -> None:
        bar.update(task, description=stage, completed=done, total=total)

    with bar:
        yield show
