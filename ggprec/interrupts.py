"""Ctrl-C and SIGTERM for long commands: stop within about a second, leave nothing half-written.

`guard()` is the one context manager every command runs under (the CLI wraps each command in it). While
it is active, SIGINT and SIGTERM raise `Interrupted(signum)` in the main thread, like KeyboardInterrupt
does for SIGINT by default, so every `with`/`finally` on the way out runs: `fileio.atomic_output`
deletes its temporary file, temporary directories are removed, SQLite rolls back an open transaction.
The CLI turns `Interrupted` into one line on stderr and exit code 130 (SIGINT) or 143 (SIGTERM).

Three places must not raise at once, and only note the signal:
- Python code called back from C (llama.cpp's log callback and the like): an exception raised there is
  printed as "Exception ignored ..." and lost. Such functions are marked with `@callback`; the handler
  sees them among the frames it interrupts and only sets the flag.
- `deferred()` blocks: work that must finish as a whole (several history rows of one comparison); the
  signal is raised when the block ends.
- C calls: Python runs the handler only between bytecodes, so a llama.cpp call is never interrupted
  inside; loops over such calls (one llama_decode per window) call `check()` between them.
llama.cpp's quantizer cannot be stopped from a callback, so `quantize` runs it in a child process that
the parent kills on the signal (see ggprec.quantize).

Outside `guard()` (library use) nothing is installed: SIGINT is Python's KeyboardInterrupt as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A command stopped by a signal. A BaseException, like KeyboardInterrupt, so that `except Exception`
    handlers do not swallow it; `removed` lists the temporary outputs deleted on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.removed: list[Path] = []

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __str__(self) -> str:
        text = f"interrupted ({self.signal_name})"
        if self.removed:
            text += "; removed partial output " + ", ".join(str(p) for p in self.removed)
        return text


class _State:
    def __init__(self) -> None:
        self.active = False
        self.signum: int | None = None  # the first signal received while active
        self.raised = False  # Interrupted was raised once: later signals only note themselves
        self.deferred = 0


_state = _State()
_callback_codes: set[CodeType] = set()
F = TypeVar("F", bound=Callable[..., Any])


def callback(fn: F) -> F:
    """Mark a function that C code calls back (a ctypes callback, or a function only such a callback
    calls): a signal arriving while it runs is only noted, never raised inside it."""
    _callback_codes.add(fn.__code__)
    return fn


def _inside_callback(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _callback_codes:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.signum is None:
        _state.signum = signum
    if _state.raised or _state.deferred or _inside_callback(frame):
        return
    _state.raised = True
    raise Interrupted(signum)


def requested() -> bool:
    """True once a signal arrived under guard() (for code that polls, e.g. an abort callback)."""
    return _state.active and _state.signum is not None


def check() -> None:
    """Raise Interrupted if a signal arrived and has not been raised yet (call between C calls)."""
    if _state.active and _state.signum is not None and not _state.raised and not _state.deferred:
        _state.raised = True
        raise Interrupted(_state.signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Let the block finish as a whole: a signal during it is raised when it ends."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
    check()


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into Interrupted while the block runs (main thread only; nested: no-op)."""
    if _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.__init__()  # type: ignore[misc]  # a fresh state per guarded command
    _state.active = True
    try:
        for s in SIGNALS:
            signal.signal(s, _handler)
        yield
        check()  # a signal noted where it could not be raised, and no check() since
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.active = False


def note_removed(exc: BaseException, path: Path) -> None:
    """Record on an Interrupted that `path` (a temporary output) was deleted, for its one-line message."""
    if isinstance(exc, Interrupted):
        exc.removed.append(path)
