"""Work that a dying peer must not take down: llama.cpp's client aborts the process (SIGABRT) when an RPC
peer dies or refuses a request, so such work runs in a forked child and an abort (or a stall) becomes one
GgprecError naming the server that is gone."""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import interrupts
from ..errors import GgprecError, safe_text
from .server import die_with_parent, stop_child
from .wire import probe

# --- work that a dying peer must not take down -----------------------------------------------------

# Seconds without a word from the child (it reports at every stage and repetition) before it is declared
# stuck: a peer that stops answering without closing its connection (a frozen host) never makes llama.cpp
# abort. $GGPREC_RPC_TIMEOUT overrides it for runs whose repetitions are longer.
STALL_TIMEOUT = 120.0


def isolated(fn: Callable[..., Any], *args: Any, servers: Sequence[str] = (),
             progress: Callable[[Any], None] | None = None, stall_timeout: float | None = None,
             **kwargs: Any) -> Any:
    """fn(*args, report=..., **kwargs) in a forked child; its return value (pickled) comes back. A
    GgprecError raised there is raised here; an abort (llama.cpp's answer to a peer that died or refused
    a request) or a child silent for `stall_timeout` seconds is one GgprecError naming the server that is
    gone. `report(message)` in the child reaches `progress` here. The child's stderr (llama.cpp's abort
    message) is kept for the error, not printed."""
    import select

    from ..llama_bindings import load

    load()  # imported before the fork: the child starts with it loaded

    if stall_timeout is None:
        stall_timeout = stall_limit()
    read_fd, write_fd = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(fn, args, kwargs, read_fd, write_fd, err_r, err_w)
    os.close(write_fd)
    os.close(err_w)
    buf, err, result, last = b"", b"", None, time.monotonic()
    try:
        open_fds = [read_fd, err_r]
        while open_fds:
            interrupts.check()
            ready, _, _ = select.select(open_fds, [], [], 0.2)
            if not ready and time.monotonic() - last > stall_timeout:
                stop_child(pid)
                raise GgprecError(f"no progress for {stall_timeout:g} s: {_culprit(servers) or 'the work'} stalled; "
                                  "stopped it, nothing was written")
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.remove(fd)
                elif fd == err_r:
                    err = (err + chunk)[-4096:]
                else:
                    last = time.monotonic()
                    buf += chunk
                    while len(buf) >= 8 and len(buf) >= 8 + (n := struct.unpack("<Q", buf[:8])[0]):
                        kind, value = pickle.loads(buf[8:8 + n])
                        buf = buf[8 + n:]
                        if kind == "progress" and progress is not None:
                            progress(value)
                        elif kind in ("result", "error"):
                            result = (kind, value)
    except BaseException:
        stop_child(pid)
        raise
    finally:
        os.close(read_fd)
        os.close(err_r)
    _, status = os.waitpid(pid, 0)
    if result is not None and result[0] == "result":
        return result[1]
    if result is not None:
        raise GgprecError(result[1])
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        culprit = _culprit(servers)
        detail = culprit or _last_line(err) or "no reason given"
        raise GgprecError(f"llama.cpp aborted ({sig}): {detail}; nothing was written")
    raise GgprecError(f"the worker process exited with code {os.waitstatus_to_exitcode(status)}: "
                      f"{_last_line(err) or 'no reason given'}")


def stall_limit() -> float:
    """STALL_TIMEOUT, or $GGPREC_RPC_TIMEOUT (seconds) when set; a bad value is a one-line error."""
    text = os.environ.get("GGPREC_RPC_TIMEOUT")
    if text is None:
        return STALL_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise GgprecError(f"GGPREC_RPC_TIMEOUT={safe_text(text, 40)!r}: expected seconds > 0")
    return value


def _child(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], read_fd: int, write_fd: int,
           err_r: int, err_w: int) -> None:
    code = 70
    try:
        os.close(read_fd)
        os.close(err_r)
        os.dup2(err_w, 2)  # llama.cpp's abort message goes to the parent, which keeps it for the error line
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it kills this process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ["GGML_NO_BACKTRACE"] = "1"  # no gdb attaching on an abort: the parent wants the end now
        faulthandler.disable()  # nor Python's traceback dump (-X faulthandler, pytest) on the original stderr
        die_with_parent()

        def send(kind: str, value: Any) -> None:
            data = pickle.dumps((kind, value))
            os.write(write_fd, struct.pack("<Q", len(data)))
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]

        try:
            send("result", fn(*args, report=lambda message: send("progress", message), **kwargs))
        except GgprecError as e:
            send("error", str(e))
        code = 0
    finally:
        os._exit(code)


def _culprit(servers: Sequence[str]) -> str | None:
    """The first server that no longer answers a probe, said in one phrase, or None."""
    for endpoint in servers:
        try:
            probe(endpoint, timeout=2.0)
        except GgprecError as e:
            return f"{e} (it answered before the run)"
    return None


def _last_line(err: bytes) -> str:
    lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    return safe_text(lines[-1].strip(), 200) if lines else ""
