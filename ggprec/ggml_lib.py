"""The one ctypes boundary to ggml: the libggml and libggml-base that libllama itself links.

llama-cpp-python 0.3.36 binds llama.h only. What ggprec needs from ggml (the device registry for
`-ot`, RPC devices, `ggml_quantize_chunk` and the type traits for the error proxy, tensor accessors for
the importance-matrix callback) is declared here, once, against the exact library copies llama.cpp
uses. Why the exact copies: the installed wheel ships `libggml.so` and `libggml.so.0` as two separate
files; libllama links the soname (`libggml.so.0`), and loading `libggml.so` by path maps a second
libggml with its own device registry, where devices registered later (RPC) are invisible to llama.cpp.
So the path is taken from the process's own mappings after llama_cpp is loaded (Linux), falling back to
the soname in the wheel's lib directory.

Declarations are tables (name -> (argtypes, restype)); `base()` and `ggml()` return the handles with
every declared function typed. A module that needs a function adds it to the table, not its own copy.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import GgprecError

c_void_p, c_char_p, c_size_t, c_int, c_int64, c_bool, c_float = (
    ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int64, ctypes.c_bool, ctypes.c_float)

# ggml's `to_float` of `struct ggml_type_traits`: void (*)(const void * x, float * y, int64_t k)
TO_FLOAT = ctypes.CFUNCTYPE(None, c_void_p, ctypes.POINTER(c_float), c_int64)


class TypeTraits(ctypes.Structure):
    """struct ggml_type_traits (ggml/include/ggml.h of the vendored llama.cpp)."""

    _fields_ = [
        ("type_name", c_char_p),
        ("blck_size", c_int64),
        ("blck_size_interleave", c_int64),
        ("type_size", c_size_t),
        ("is_quantized", c_bool),
        ("to_float", c_void_p),
        ("from_float_ref", c_void_p),
    ]


# libggml-base: tensors, types, quantization, buffers.
BASE: dict[str, tuple[list[Any], Any]] = {
    "ggml_type_size": ([c_int], c_size_t),
    "ggml_blck_size": ([c_int], c_int64),
    "ggml_row_size": ([c_int, c_int64], c_size_t),
    "ggml_get_type_traits": ([c_int], ctypes.POINTER(TypeTraits)),
    "ggml_quantize_init": ([c_int], None),
    "ggml_quantize_requires_imatrix": ([c_int], c_bool),
    # size_t ggml_quantize_chunk(type, const float * src, void * dst, int64_t start, int64_t nrows,
    #                            int64_t n_per_row, const float * imatrix)
    "ggml_quantize_chunk": ([c_int, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_void_p], c_size_t),
    "ggml_tensor_overhead": ([], c_size_t),
    "ggml_get_name": ([c_void_p], c_char_p),
    "ggml_op_name": ([c_int], c_char_p),
    "ggml_nbytes": ([c_void_p], c_size_t),
    "ggml_nrows": ([c_void_p], c_int64),
    "ggml_backend_tensor_get": ([c_void_p, c_void_p, c_size_t, c_size_t], None),
    "ggml_backend_buffer_is_host": ([c_void_p], c_bool),
}

# libggml: the backend/device registry.
GGML: dict[str, tuple[list[Any], Any]] = {
    "ggml_backend_dev_count": ([], c_size_t),
    "ggml_backend_dev_get": ([c_size_t], c_void_p),
    "ggml_backend_dev_by_type": ([c_int], c_void_p),
    "ggml_backend_dev_by_name": ([c_char_p], c_void_p),
    "ggml_backend_dev_name": ([c_void_p], c_char_p),
    "ggml_backend_dev_description": ([c_void_p], c_char_p),
    "ggml_backend_dev_memory": ([c_void_p, ctypes.POINTER(c_size_t), ctypes.POINTER(c_size_t)], None),
    "ggml_backend_dev_type": ([c_void_p], c_int),
    "ggml_backend_dev_buffer_type": ([c_void_p], c_void_p),
    "ggml_backend_buft_name": ([c_void_p], c_char_p),
    "ggml_backend_reg_count": ([], c_size_t),
    "ggml_backend_reg_get": ([c_size_t], c_void_p),
    "ggml_backend_reg_name": ([c_void_p], c_char_p),
    "ggml_backend_reg_by_name": ([c_char_p], c_void_p),
    "ggml_backend_reg_get_proc_address": ([c_void_p, c_char_p], c_void_p),
    "ggml_backend_register": ([c_void_p], None),
    "ggml_backend_device_register": ([c_void_p], None),
    # rpc (a registry's devices: what ggml_backend_rpc_add_server returned)
    "ggml_backend_reg_dev_count": ([c_void_p], c_size_t),
    "ggml_backend_reg_dev_get": ([c_void_p, c_size_t], c_void_p),
}

DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type: CPU, GPU, IGPU, ACCEL
DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL")


def lib_dir() -> Path:
    """The directory of the llama.cpp libraries llama-cpp-python ships."""
    from .llama_bindings import load
    llama_cpp = load()

    return Path(llama_cpp.__file__).parent / "lib"


def _mapped_path(stem: str) -> Path | None:
    """The file the process has mapped for `stem` (e.g. "libggml.so", "libggml-base.so"), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        name = Path(path).name
        if path.startswith("/") and (name == stem or name.startswith(stem + ".")):
            return Path(path)
    return None


def library_path(stem: str) -> Path:
    """The copy of `stem` that libllama uses: the mapped one, else the soname `<stem>.0`, else `<stem>`."""
    from .llama_bindings import load
    load()  # loads libllama and, through it, the ggml libraries it links

    mapped = _mapped_path(stem)
    if mapped is not None:
        return mapped
    directory = lib_dir()
    for name in (stem + ".0", stem, stem.replace(".so", ".dylib"), stem.replace("lib", "", 1).replace(".so", ".dll")):
        if (directory / name).exists():
            return directory / name
    raise GgprecError(f"no {stem} in {directory}: this llama-cpp-python build lacks the ggml library")


def _declare(lib: Any, table: dict[str, tuple[list[Any], Any]]) -> Any:
    for fname, (argtypes, restype) in table.items():
        fn = getattr(lib, fname)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


@lru_cache(maxsize=1)
def base() -> Any:
    """libggml-base, with BASE declared."""
    return _declare(ctypes.CDLL(str(library_path("libggml-base.so"))), BASE)


@lru_cache(maxsize=1)
def ggml() -> Any:
    """libggml (the registry llama.cpp loads its devices into), with GGML declared."""
    return _declare(ctypes.CDLL(str(library_path("libggml.so"))), GGML)


def proc_address(reg_name: str, fn_name: str) -> int | None:
    """A backend registry's extension function (e.g. RPC's `ggml_backend_rpc_add_server`), or None when
    this build has no such registry or function."""
    lib = ggml()
    reg = lib.ggml_backend_reg_by_name(reg_name.encode())
    if not reg:
        return None
    return lib.ggml_backend_reg_get_proc_address(reg, fn_name.encode()) or None


def devices() -> list[tuple[str, str, int]]:
    """(name, type, device pointer) of every device in llama.cpp's registry, in registry order."""
    lib = ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        out.append((lib.ggml_backend_dev_name(dev).decode(),
                    DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind), dev))
    return out


def buffer_name(dev: int) -> str:
    """The name of a device's default buffer type: what llama.cpp names its buffers by (CPU, CUDA0,
    RPC0[127.0.0.1:50052]) and `-ot` accepts."""
    lib = ggml()
    return lib.ggml_backend_buft_name(lib.ggml_backend_dev_buffer_type(dev)).decode()


def free_memory(dev: int) -> int:
    """Bytes the device reports free (a CPU device, RPC CPU servers included: its host's whole RAM)."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return free.value


def buffer_types() -> dict[str, int]:
    """Buffer type name -> ggml_backend_buffer_type_t of every device's default buffer type (the names
    llama.cpp's `-ot` accepts, e.g. CPU, CUDA0, RPC0[127.0.0.1:50052])."""
    lib = ggml()
    out: dict[str, int] = {}
    for _, _, dev in devices():
        buft = lib.ggml_backend_dev_buffer_type(dev)
        if buft:
            out[lib.ggml_backend_buft_name(buft).decode()] = buft
    return out
