"""llama.cpp's log, read in this process: one `llama_log_set` callback feeds the innermost `capture_log()`;
`llama()` gives the bindings with it installed, so nothing prints behind ggprec's back."""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import interrupts
from ..errors import safe_text

# enum ggml_log_level of the vendored ggml (checked against the levels its messages arrive with).
LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CONT = 1, 2, 3, 4, 5


@dataclass
class LogCapture:
    """llama.cpp's log lines, in order, with their level; continuation fragments are joined."""

    lines: list[tuple[int, str]] = field(default_factory=list)
    _partial: str = ""
    _partial_level: int = LOG_INFO

    def _feed(self, level: int, text: str) -> None:
        if level != LOG_CONT:
            self._partial_level = level
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.lines.append((self._partial_level, line))

    def flush(self) -> None:
        if self._partial:
            self.lines.append((self._partial_level, self._partial))
            self._partial = ""

    @property
    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def errors(self) -> list[str]:
        """Error lines without llama.cpp's `function_name: ` prefixes, first one first."""
        out = []
        for level, line in self.lines:
            if level == LOG_ERROR and line.strip():
                line = re.sub(r"^(\w+: )+", "", line.strip())
                out.append(line.removeprefix("error loading model: "))
        return out


# llama_log_set is process-global: one installed callback feeds the innermost active capture.
_stack: list[LogCapture] = []
_lock = threading.Lock()
_callback: Any = None  # the ctypes function object must stay referenced while installed


@interrupts.callback
def _on_log(level: int, text: bytes, user: ctypes.c_void_p) -> None:
    """llama.cpp's log callback: lines go to the innermost capture; outside a capture they are dropped
    (ggprec runs llama.cpp quietly; what matters reaches the user as a GgprecError)."""
    if _stack:
        _stack[-1]._feed(level, text.decode("utf-8", "replace"))


def _install() -> None:
    """Install ggprec's log callback once, replacing the printing one llama-cpp-python installs."""
    global _callback
    from ..llama_bindings import load
    llama_cpp = load()

    if _callback is not None:
        return
    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def llama() -> Any:
    """The llama_cpp bindings with ggprec's log callback installed (so nothing prints behind our back)."""
    from ..llama_bindings import load
    llama_cpp = load()

    with _lock:
        _install()
    return llama_cpp


@contextlib.contextmanager
def capture_log(into: LogCapture | None = None) -> Iterator[LogCapture]:
    """Collect llama.cpp's log lines while the block runs (the innermost capture gets them). Pass
    `into` to keep adding to an earlier capture, e.g. one that spans a load and the runs after it."""
    cap = into if into is not None else LogCapture()
    with _lock:
        _stack.append(cap)
        _install()
    try:
        yield cap
    finally:
        cap.flush()
        with _lock:
            _stack.remove(cap)


def failure_reason(log: LogCapture | None) -> str:
    if log is None:
        return "no reason logged"
    log.flush()
    errs = log.errors()
    return safe_text(errs[0], 300) if errs else "no reason logged"  # llama.cpp's line may quote a file's names


def system_info() -> str:
    from ..llama_bindings import load
    llama_cpp = load()

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
