"""llama_bindings.load(): llama-cpp-python's C bindings without its Llama class; the full package on demand.

Each case runs in a fresh interpreter: what matters is what a process that starts with ggprec loads."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

pytestmark = pytest.mark.llama


def run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_load_gives_the_bindings_without_numpy_or_the_llama_class() -> None:
    got = run("import sys, json\n"
              "from ggprec.llama_bindings import load\n"
              "lc = load()\n"
              "print(json.dumps({'same': sys.modules['llama_cpp'] is lc, 'numpy': 'numpy' in sys.modules,\n"
              "  'llama_py': 'llama_cpp.llama' in sys.modules, 'quantize': callable(lc.llama_model_quantize),\n"
              "  'version': lc.__version__, 'file': lc.__file__}))")
    assert got["same"] and got["quantize"]
    assert not got["numpy"] and not got["llama_py"]
    assert got["version"] == version("llama_cpp_python")  # read from the package's own __init__
    assert got["file"].endswith("llama_cpp/__init__.py")


def test_the_full_package_loads_on_first_use_and_keeps_the_log_callback() -> None:
    got = run("import ctypes, json\n"
              "from ggprec.llama_backend import llama\n"
              "lc = llama()  # ggprec's log callback installed\n"
              "def current():\n"
              "    cb, ud = lc.llama_log_callback(), ctypes.c_void_p()\n"
              "    lc.llama_log_get(ctypes.byref(cb), ctypes.byref(ud))\n"
              "    return ctypes.cast(cb, ctypes.c_void_p).value\n"
              "before = current()\n"
              "from llama_cpp import Llama\n"
              "import llama_cpp.llama\n"
              "print(json.dumps({'llama': Llama is llama_cpp.llama.Llama, 'kept': current() == before}))")
    assert got == {"llama": True, "kept": True}


def test_load_returns_a_fully_imported_package_as_it_is() -> None:
    got = run("import json, llama_cpp\n"
              "from ggprec.llama_bindings import load\n"
              "print(json.dumps({'same': load() is llama_cpp, 'llama': hasattr(llama_cpp, 'Llama')}))")
    assert got == {"same": True, "llama": True}


def test_a_missing_name_is_an_attribute_error() -> None:
    got = run("import json\n"
              "from ggprec.llama_bindings import load\n"
              "lc = load()\n"
              "try:\n"
              "    lc.no_such_binding\n"
              "    r = 'found'\n"
              "except AttributeError as e:\n"
              "    r = str(e)\n"
              "print(json.dumps({'r': r}))")
    assert got["r"] == "module 'llama_cpp' has no attribute 'no_such_binding'"
