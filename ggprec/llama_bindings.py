"""llama-cpp-python's C bindings (`llama_cpp.llama_*`) without its high-level layer, loaded in 14 ms, not 76.

`import llama_cpp` runs the package's `__init__`, which imports the bindings module (`llama_cpp.llama_cpp`:
ctypes declarations and libllama) and then the `Llama` class with numpy, jinja2 and the chat formats.
ggprec uses the bindings only, and the rest cost ~60 ms at the start of every command that touches
llama.cpp: 1.2% of a 1B quantization, which is measured against llama.cpp's own binary.

`load()` returns `sys.modules["llama_cpp"]`. When llama_cpp is not imported yet, it registers a package
module of that name first (the installed package's own spec and path, so `llama_cpp.<submodule>` imports
work as usual), imports the bindings under it and copies their public names onto it, as the package's
`from .llama_cpp import *` does. Any other name (`Llama`, ...) runs the package's real `__init__` on that
same module on first access, so code outside ggprec that uses the full package still gets it; llama.cpp's
log callback, which that `__init__` replaces with llama-cpp-python's, is put back as it was.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "llama_cpp"
_lock = threading.RLock()  # re-entered: the package's __init__ imports names from itself while it runs


def load() -> ModuleType:
    """The llama_cpp module with every `llama_*` binding, importing as little as possible."""
    module = sys.modules.get(PACKAGE)
    if module is not None:
        return module
    with _lock:
        module = sys.modules.get(PACKAGE)
        if module is None:
            module = _load_light()
    return module


def _load_light() -> ModuleType:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return importlib.import_module(PACKAGE)  # not a regular package: let the import system say why
    init = Path(spec.origin)
    module = importlib.util.module_from_spec(spec)  # the package's own spec: __path__, __file__, __package__
    version = re.search(r'^__version__ = "([^"]+)"', init.read_text(encoding="utf-8"), re.M)
    if version is not None:
        module.__version__ = version.group(1)
    module.__getattr__ = _full_package(module, init)  # type: ignore[method-assign]
    sys.modules[PACKAGE] = module
    try:
        bindings = importlib.import_module(f"{PACKAGE}.llama_cpp")
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    module.__dict__.update({k: v for k, v in vars(bindings).items() if not k.startswith("_")})
    return module


def _full_package(module: ModuleType, init: Path) -> Any:
    started = False  # the real __init__ has run, or is running (then a missing name is missing, as in any import)

    def __getattr__(name: str) -> Any:
        nonlocal started
        if name.startswith("__"):  # dunder probes (copy, pickle, inspect) must not import the world
            raise AttributeError(name)
        with _lock:
            if not started:
                started = True
                _run_init(module, init)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    return __getattr__


def _run_init(module: ModuleType, init: Path) -> None:
    """Execute the package's `__init__` on `module`, keeping the log callback installed before it."""
    callback, user_data = module.llama_log_callback(), ctypes.c_void_p()
    module.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    exec(compile(init.read_bytes(), str(init), "exec"), module.__dict__)  # noqa: S102  (the package's own code)
    module.llama_log_set(callback, user_data)
