"""llama.cpp's RPC devices (ggml-rpc): a server per host, the client adds them as devices.

Three halves, each matching llama.cpp (vendored in llama-cpp-python 0.3.36, protocol 7.0.0):
- the server is llama.cpp's own `ggml_backend_rpc_start_server` (the RPC registry's extension, reached
  through `ggml_lib.proc_address`), protocol-compatible with `ggml-rpc-server`; it blocks for ever, so
  `serve()` runs it in a child process and stops it on a signal;
- `probe()` speaks the wire format in pure Python (request `cmd u8 | size u64 | payload`, answer
  `size u64 | payload`: HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY of ggml-rpc.cpp): llama.cpp's client
  aborts the process (SIGABRT) on an unreachable peer, a foreign port or a version mismatch, so every
  server is probed first and such a peer is a one-line GgprecError before anything loads;
- `add_servers()` registers the servers' devices in llama.cpp's registry (`ggml_backend_rpc_add_server`
  + `ggml_backend_register`), for `llama_model_params.devices`.

A peer that dies during inference also ends llama.cpp's client with SIGABRT: `isolated()` runs such work
in a forked child and turns an abort into one line (and a stalled peer into one after a timeout).

The protocol has no authentication: whoever reaches the port can allocate memory and run graphs on the
server. Servers bind to loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import interrupts
from .errors import GgprecError, safe_text

PROTOCOL = (7, 0, 0)  # RPC_PROTO_*_VERSION of ggml/include/ggml-rpc.h in the vendored llama.cpp
DEFAULT_PORT = 50052  # ggml-rpc-server's default
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15  # enum rpc_cmd
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE: transport capabilities in HELLO (all zero: plain TCP)
HELLO_ANSWER = 4 + CONN_CAPS  # major, minor, patch, padding, caps
MAX_DEVICES = 256  # a sanity bound on what a peer may claim
PROBE_TIMEOUT = 5.0
INSTALL_FIX = ('reinstall it with RPC: CMAKE_ARGS="-DGGML_RPC=on" pip install --no-cache-dir --force-reinstall '
               '--no-deps llama-cpp-python==0.3.36 (pip\'s wheel cache ignores CMAKE_ARGS)')
SECURITY_NOTE = ("the RPC protocol has no authentication or encryption: anyone who reaches this port can use "
                 "the server's memory and compute; expose it only on a trusted network")


@dataclass(frozen=True)
class RpcDevice:
    index: int  # the device's index on its server (the N of the buffer name RPCN[host:port])
    free: int  # bytes; a CPU server reports its host's whole RAM as free
    total: int


@dataclass(frozen=True)
class RpcPeer:
    endpoint: str
    version: tuple[int, int, int]
    devices: tuple[RpcDevice, ...]

    def buffer_names(self) -> list[str]:
        """llama.cpp's buffer type names of this server's devices (`RPC0[127.0.0.1:50052]`)."""
        return [buffer_name(self.endpoint, d.index) for d in self.devices]


def buffer_name(endpoint: str, index: int) -> str:
    return f"RPC{index}[{endpoint}]"


# --- endpoints -------------------------------------------------------------------------------------

def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT as llama.cpp reads it (host up to the first ':'; no IPv6 literals)."""
    host, sep, port_text = endpoint.strip().partition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or ":" in port_text:
        raise GgprecError(f"RPC server {safe_text(endpoint, 80)!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host, int(port_text)


def parse_servers(values: Sequence[str]) -> tuple[str, ...]:
    """`--rpc` values (comma-separated HOST:PORT lists, as llama.cpp's --rpc) in order, each once."""
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            host, port = parse_endpoint(item)
            endpoint = f"{host}:{port}"
            if endpoint in out:
                raise GgprecError(f"RPC server {endpoint} given twice")
            out.append(endpoint)
    if len(out) > MAX_SERVERS:
        raise GgprecError(f"{len(out)} RPC servers: llama.cpp takes at most {MAX_SERVERS}")
    return tuple(out)


# --- this build --------------------------------------------------------------------------------------

def supports_rpc() -> bool:
    """Whether the installed llama.cpp has the RPC backend (built with -DGGML_RPC=on)."""
    import llama_cpp

    from . import ggml_lib

    if not llama_cpp.llama_supports_rpc():
        return False
    return ggml_lib.proc_address("RPC", "ggml_backend_rpc_add_server") is not None


def require_rpc() -> None:
    """A one-line GgprecError naming the fix when this llama.cpp lacks RPC."""
    if not supports_rpc():
        raise GgprecError(f"this llama-cpp-python has no RPC backend; {INSTALL_FIX}")


def _function(name: str, restype: Any, *argtypes: Any) -> Any:
    from . import ggml_lib

    require_rpc()
    address = ggml_lib.proc_address("RPC", name)
    if address is None:
        raise GgprecError(f"this llama.cpp's RPC backend has no {name}; {INSTALL_FIX}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


# --- the wire client --------------------------------------------------------------------------------

class _Wire:
    """One connection with a deadline shared by every step (a peer that trickles bytes cannot stall us)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        host, port = parse_endpoint(endpoint)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            raise self.error("connection refused (is an RPC server running there?)") from None
        except TimeoutError:
            raise self.error(f"no connection within {timeout:g} s (unreachable host or a firewall)") from None
        except OSError as e:
            raise self.error(f"cannot connect: {e.strerror or e}") from None

    def error(self, why: str) -> GgprecError:
        return GgprecError(f"RPC server {self.endpoint}: {why}")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def send(self, cmd: int, payload: bytes = b"") -> None:
        self.sock.settimeout(self._left())
        self.sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)

    def answer(self, expected: int) -> bytes:
        size = struct.unpack("<Q", self._recv(8))[0]
        if size != expected:
            raise self.error(f"answered {size} bytes where an RPC server of protocol "
                             f"{'.'.join(map(str, PROTOCOL))} sends {expected}: not a compatible llama.cpp RPC server")
        return self._recv(size)

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(self._left())
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> RpcPeer:
    """Ask an RPC server its protocol version, its devices and their memory, in pure Python (nothing of
    llama.cpp is loaded or connected). Every way it can fail is a one-line GgprecError."""
    wire = _Wire(endpoint, timeout)
    step = "the handshake"
    try:
        wire.send(CMD_HELLO, bytes(CONN_CAPS))
        major, minor, patch = struct.unpack("<BBB", wire.answer(HELLO_ANSWER)[:3])
        version = (major, minor, patch)
        if major != PROTOCOL[0] or minor > PROTOCOL[1]:  # llama.cpp's own rule (negotiate_hello)
            raise wire.error(f"speaks RPC protocol {major}.{minor}.{patch}, this llama.cpp "
                             f"{'.'.join(map(str, PROTOCOL))}: run the same llama.cpp version on every host")
        step = "the device count"
        wire.send(CMD_DEVICE_COUNT)
        count = struct.unpack("<I", wire.answer(4))[0]
        if not 0 < count <= MAX_DEVICES:
            raise wire.error(f"reports {count} devices")
        devices = []
        for index in range(count):
            step = f"the memory of device {index}"
            wire.send(CMD_GET_DEVICE_MEMORY, struct.pack("<I", index))
            free, total = struct.unpack("<QQ", wire.answer(16))
            devices.append(RpcDevice(index, free, total))
        return RpcPeer(endpoint, version, tuple(devices))
    except TimeoutError:
        raise wire.error(f"no answer to {step} within {timeout:g} s: not an RPC server, or one busy with another "
                         "client (a server serves one client at a time)") from None
    except EOFError:
        raise wire.error(f"closed the connection during {step}: not an RPC server, or one of another protocol "
                         f"version than {'.'.join(map(str, PROTOCOL))}") from None
    except OSError as e:
        raise wire.error(f"connection lost during {step}: {e.strerror or e}") from None
    finally:
        wire.close()


def probe_all(endpoints: Sequence[str], timeout: float = PROBE_TIMEOUT) -> list[RpcPeer]:
    return [probe(e, timeout) for e in endpoints]


def planned_devices(endpoints: Sequence[str], names: Sequence[str] = (), local_gpus: Sequence[tuple[str, int]] = (),
                    timeout: float = PROBE_TIMEOUT, split_mode: str = "layer", main_gpu: int = 0) -> list[Any]:
    """The layer_split.OffloadDevices llama.cpp would offload to, found by probing (nothing of llama.cpp
    connects): every server's devices in order, registry names RPC0, RPC1... as llama.cpp numbers them,
    then `local_gpus` ((name, free bytes), e.g. CUDA0); `names` (--device) picks and orders them
    ("none": no device); split_mode "none" keeps device `main_gpu` only, as llama.cpp."""
    from .layer_split import OffloadDevice, select_main

    found: list[OffloadDevice] = []
    for peer in probe_all(endpoints, timeout):
        for d in peer.devices:
            found.append(OffloadDevice(f"RPC{len(found)}", buffer_name(peer.endpoint, d.index), d.free))
    found += [OffloadDevice(name, name, free) for name, free in local_gpus]
    if not names:
        return select_main(found, split_mode, main_gpu)
    if tuple(names) == ("none",):
        return []
    by_name = {d.name: d for d in found} | {d.buffer: d for d in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise GgprecError(f"invalid device {safe_text(missing[0], 80)!r}; devices to offload to: "
                          + (", ".join(d.name for d in found) or "none (no GPU, no RPC server given)"))
    return select_main([by_name[n] for n in names], split_mode, main_gpu)


# --- registering servers in llama.cpp ---------------------------------------------------------------

_registered: dict[str, list[int]] = {}  # endpoint -> its devices (ggml_backend_dev_t), once per process


def registered() -> list[str]:
    """The servers registered in llama.cpp's registry by this process."""
    return list(_registered)


def add_servers(endpoints: Sequence[str]) -> list[int]:
    """The devices of `endpoints`, in order, registered in llama.cpp's registry (each server once per
    process). Probe first: llama.cpp aborts the process on a server it cannot talk to."""
    from . import ggml_lib

    add = _function("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    lib = ggml_lib.ggml()
    out: list[int] = []
    for endpoint in endpoints:
        if endpoint not in _registered:
            reg = add(endpoint.encode())
            if not reg:
                raise GgprecError(f"RPC server {endpoint}: llama.cpp could not add it")
            lib.ggml_backend_register(reg)
            _registered[endpoint] = [lib.ggml_backend_reg_dev_get(reg, i)
                                     for i in range(lib.ggml_backend_reg_dev_count(reg))]
        out.extend(_registered[endpoint])
    return out


# --- the server -------------------------------------------------------------------------------------

def local_devices(names: Sequence[str] | None = None) -> list[int]:
    """The devices a server shares: the named ones, else (as ggml-rpc-server) every local accelerator,
    else the CPU."""
    from . import ggml_lib

    devs = [(n, t, d) for n, t, d in ggml_lib.devices() if not n.startswith("RPC")]
    if names:
        by_name = {n: d for n, _, d in devs}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise GgprecError(f"unknown device {missing[0]!r}; this llama.cpp has: {', '.join(by_name)}")
        return [by_name[n] for n in names]
    return [d for _, t, d in devs if t in ("GPU", "IGPU")] or [d for _, t, d in devs if t == "CPU"][:1]


def start_server(host: str, port: int, threads: int, devices: Sequence[str] | None = None) -> None:
    """llama.cpp's RPC server on host:port for the local devices; blocks for ever (returns only when
    llama.cpp cannot start it, e.g. the port is taken)."""
    devs = local_devices(devices)
    start = _function("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                      ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    array = (ctypes.c_void_p * len(devs))(*devs)
    start(f"{host}:{port}".encode(), None, threads, len(devs), array)


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


def is_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


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
        _stop(pid)
        raise
    if os.WIFSIGNALED(status):
        raise GgprecError(f"the RPC server on {host}:{port} was killed by {signal.Signals(os.WTERMSIG(status)).name}")
    raise GgprecError(f"llama.cpp's RPC server on {host}:{port} stopped (code {os.waitstatus_to_exitcode(status)}): "
                      "see its message above")


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)  # the server holds nothing worth a clean shutdown
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def die_with_parent() -> None:
    """Ask Linux to kill this (child) process when its parent dies (PR_SET_PDEATHSIG); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


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

    import llama_cpp  # noqa: F401  (imported before the fork: the child starts with it loaded)

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
                _stop(pid)
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
        _stop(pid)
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
