"""`ggprec rpc-server`: llama.cpp's RPC server in a child process (the server call blocks in C, where
Python's signal handlers never run), stopped by a signal; the helpers its children share."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence

from ..errors import GgprecError
from .backend import local_devices, require_rpc, start_server


def check_listen(host: str, port: int) -> None:
    """A one-line error when host:port cannot be listened on (taken, or not an address of this host)."""
    if ":" in host:
        raise GgprecError(f"RPC server host {host!r}: llama.cpp's RPC endpoints take no IPv6 literals")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise GgprecError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(host: str, port: int, threads: int, devices: Sequence[str] | None = None,
          on_start: Callable[[int], None] | None = None) -> None:
    """Run llama.cpp's RPC server in a child process until a signal: the server call blocks in C, where
    Python's signal handlers never run, so this (parent) process waits, and under interrupts.guard() a
    SIGINT/SIGTERM raises Interrupted here, which stops the child. on_start(pid) is told the child's pid."""
    require_rpc()
    check_listen(host, port)
    local_devices(devices)  # an unknown device name fails here, in one line
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 3
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C on the terminal ends it directly too
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent()
            start_server(host, port, threads, devices)
        finally:
            os._exit(code)
    if on_start is not None:
        on_start(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)  # a signal's Interrupted is raised here
    except BaseException:
        stop_child(pid)
        raise
    if os.WIFSIGNALED(status):
        raise GgprecError(f"the RPC server on {host}:{port} was killed by {signal.Signals(os.WTERMSIG(status)).name}")
    raise GgprecError(f"llama.cpp's RPC server on {host}:{port} stopped (code {os.waitstatus_to_exitcode(status)}): "
                      "see its message above")


def stop_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)  # the server holds nothing worth a clean shutdown
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def die_with_parent() -> None:
    """Ask Linux to kill this (child) process when its parent dies (PR_SET_PDEATHSIG); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

