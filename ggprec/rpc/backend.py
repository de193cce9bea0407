"""llama.cpp's RPC backend through ctypes: whether this build has it, registering servers' devices in
llama.cpp's registry (`ggml_backend_rpc_add_server` + `ggml_backend_register`, for
`llama_model_params.devices`), and llama.cpp's own server (`ggml_backend_rpc_start_server`, reached through
`ggml_lib.proc_address`, protocol-compatible with `ggml-rpc-server`)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from ..errors import GgprecError

INSTALL_FIX = ('reinstall it with RPC: CMAKE_ARGS="-DGGML_RPC=on" pip install --no-cache-dir --force-reinstall '
               '--no-deps llama-cpp-python==0.3.36 (pip\'s wheel cache ignores CMAKE_ARGS)')
# --- this build --------------------------------------------------------------------------------------

def supports_rpc() -> bool:
    """Whether the installed llama.cpp has the RPC backend (built with -DGGML_RPC=on)."""
    from ..llama_bindings import load
    llama_cpp = load()

    from .. import ggml_lib

    if not llama_cpp.llama_supports_rpc():
        return False
    return ggml_lib.proc_address("RPC", "ggml_backend_rpc_add_server") is not None


def require_rpc() -> None:
    """A one-line GgprecError naming the fix when this llama.cpp lacks RPC."""
    if not supports_rpc():
        raise GgprecError(f"this llama-cpp-python has no RPC backend; {INSTALL_FIX}")


def function(name: str, restype: Any, *argtypes: Any) -> Any:
    from .. import ggml_lib

    require_rpc()
    address = ggml_lib.proc_address("RPC", name)
    if address is None:
        raise GgprecError(f"this llama.cpp's RPC backend has no {name}; {INSTALL_FIX}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)

# --- registering servers in llama.cpp ---------------------------------------------------------------

_registered: dict[str, list[int]] = {}  # endpoint -> its devices (ggml_backend_dev_t), once per process


def registered() -> list[str]:
    """The servers registered in llama.cpp's registry by this process."""
    return list(_registered)


def add_servers(endpoints: Sequence[str]) -> list[int]:
    """The devices of `endpoints`, in order, registered in llama.cpp's registry (each server once per
    process). Probe first: llama.cpp aborts the process on a server it cannot talk to."""
    from .. import ggml_lib

    add = function("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
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

# --- the server (llama.cpp's) -------------------------------------------------------------------------------------

def local_devices(names: Sequence[str] | None = None) -> list[int]:
    """The devices a server shares: the named ones, else (as ggml-rpc-server) every local accelerator,
    else the CPU."""
    from .. import ggml_lib

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
    start = function("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                      ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    array = (ctypes.c_void_p * len(devs))(*devs)
    start(f"{host}:{port}".encode(), None, threads, len(devs), array)

