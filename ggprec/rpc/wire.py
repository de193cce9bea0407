"""The RPC wire client in pure Python: endpoints, and a probe that asks a server its protocol version, its
devices and their memory (ggml-rpc.cpp's request `cmd u8 | size u64 | payload`, answer `size u64 | payload`:
HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY), so that an unreachable peer, a foreign port or a version mismatch
(on which llama.cpp's own client aborts the process) is a one-line GgprecError before anything loads.
Nothing here loads llama.cpp: the predict stack (device_plan, recommend) plans with it."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GgprecError, safe_text

PROTOCOL = (7, 0, 0)  # RPC_PROTO_*_VERSION of ggml/include/ggml-rpc.h in the vendored llama.cpp
DEFAULT_PORT = 50052  # ggml-rpc-server's default
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15  # enum rpc_cmd
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE: transport capabilities in HELLO (all zero: plain TCP)
HELLO_ANSWER = 4 + CONN_CAPS  # major, minor, patch, padding, caps
MAX_DEVICES = 256  # a sanity bound on what a peer may claim
PROBE_TIMEOUT = 5.0
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

# --- the wire client --------------------------------------------------------------------------------

class Wire:
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
    wire = Wire(endpoint, timeout)
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
    from ..layer_split import OffloadDevice, select_main

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


def is_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False
