"""ggml_lib: the ctypes boundary binds the very libggml copies libllama links, never a second one."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.llama


def mapped(stem: str) -> set[str]:
    """Files named `stem` or `stem.N...` that this process has mapped."""
    names = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.rsplit(" ", 1)[-1]
        if path.startswith("/") and (Path(path).name == stem or Path(path).name.startswith(stem + ".")):
            names.add(path)
    return names


def test_the_bound_libggml_is_the_one_libllama_maps_and_no_second_copy_appears() -> None:
    from ggprec import ggml_lib

    ggml_lib.buffer_types()  # binds libggml and asks its device registry
    ggml_lib.base().ggml_tensor_overhead()
    assert mapped("libggml.so") == {str(ggml_lib.library_path("libggml.so"))}
    assert mapped("libggml-base.so") == {str(ggml_lib.library_path("libggml-base.so"))}


def test_the_registry_has_the_cpu_device_and_its_buffer_type() -> None:
    from ggprec import ggml_lib

    assert ("CPU", "CPU") in {(name, kind) for name, kind, _ in ggml_lib.devices()}
    assert "CPU" in ggml_lib.buffer_types()


def test_a_registry_this_build_lacks_has_no_proc_address() -> None:
    from ggprec import ggml_lib

    assert ggml_lib.proc_address("NO-SUCH-BACKEND", "ggml_backend_no_such_fn") is None
