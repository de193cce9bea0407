"""The ggml type table agrees with ggml itself and with gguf-py, and resolves the names users type."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import pytest

from ggprec import ggml_types
from ggprec.ggml_types import TYPES, UnknownTypeError, by_id, kv_cache_type, lookup, weight_type

# gguf-py 0.19 still lists q8_1 with two f32 scales (40 bytes); ggml's block_q8_1 holds two f16
# scales (36 bytes), which the vendored libggml confirms below. q8_1 is never stored in a file.
GGUF_PY_STALE = {"q8_1": (32, 40)}


@pytest.fixture(scope="module")
def libggml() -> ctypes.CDLL:
    """The libggml-base that llama-cpp-python ships: the truth for the vendored llama.cpp."""
    import llama_cpp

    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.exists():
        pytest.skip(f"{path} not found (llama-cpp-python built without a shared libggml-base)")
    lib = ctypes.CDLL(str(path))
    lib.ggml_type_name.restype, lib.ggml_type_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_type_size.restype, lib.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    lib.ggml_blck_size.restype, lib.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    return lib


def test_every_type_matches_ggml_name_block_size_and_bytes(libggml: ctypes.CDLL) -> None:
    for t in TYPES:
        assert libggml.ggml_type_name(t.type_id).decode().lower() == t.name
        assert (libggml.ggml_blck_size(t.type_id), libggml.ggml_type_size(t.type_id)) == (t.block_size, t.block_bytes)


def test_every_live_ggml_type_is_in_the_table(libggml: ctypes.CDLL) -> None:
    import llama_cpp

    # Removed types keep their id in ggml's enum with a block size of 0.
    live = [i for i in range(llama_cpp.GGML_TYPE_COUNT) if libggml.ggml_blck_size(i) > 0]
    assert sorted(live) == sorted(t.type_id for t in TYPES)


def test_ids_and_sizes_match_gguf_py() -> None:
    for t in TYPES:
        if not hasattr(gguf.GGMLQuantizationType, t.name.upper()):
            continue  # newer than gguf-py (q2_0 in gguf 0.19)
        q = gguf.GGMLQuantizationType[t.name.upper()]
        assert q.value == t.type_id, t.name
        expected = GGUF_PY_STALE.get(t.name, (t.block_size, t.block_bytes))
        assert gguf.GGML_QUANT_SIZES[q] == expected, t.name


def test_every_gguf_py_type_is_in_the_table() -> None:
    assert {q.value for q in gguf.GGMLQuantizationType} <= {t.type_id for t in TYPES}


def test_weight_types_have_the_llama_ftype_gguf_py_names() -> None:
    for t in TYPES:
        if t.ftype is None:
            continue
        ftype = gguf.LlamaFileType(t.ftype)
        prefix = "ALL_" if t.name == "f32" else "MOSTLY_"
        assert ftype.name.startswith(prefix + t.name.upper()), (t.name, ftype.name)


def test_sizes_named_in_the_design_notes() -> None:
    sizes = {t.name: (t.block_size, t.block_bytes) for t in TYPES}
    assert sizes["q8_0"] == (32, 34) and sizes["q4_0"] == (32, 18) and sizes["q6_k"] == (256, 210)
    assert lookup("q4_0").bits_per_weight == 4.5
    assert lookup("q8_0").bits_per_weight == 8.5
    assert lookup("f16").bits_per_weight == 16.0


@pytest.mark.parametrize(
    ("alias", "name"),
    [("fp32", "f32"), ("fp16", "f16"), ("bf16", "bf16"), ("int8", "q8_0"), ("int4", "q4_0"),
     ("FP16", "f16"), ("Q8_0", "q8_0"), ("q4_K", "q4_k"), (" bfloat16 ", "bf16")],
)
def test_aliases_and_llama_cpp_spellings_resolve(alias: str, name: str) -> None:
    assert lookup(alias).name == name


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("q8_O", "q8_0"), ("q8-0", "q8_0"), ("fp61", "fp16"), ("int-8", "int8"), ("iq2_xx", "iq2_xxs"), ("q4_k_m", "q4_k"),
])
def test_unknown_names_suggest_the_nearest(typo: str, suggestion: str) -> None:
    with pytest.raises(UnknownTypeError, match=f"unknown ggml type '{typo}' \\(did you mean '{suggestion}'\\?\\)"):
        lookup(typo)


def test_unknown_name_with_nothing_near_says_so_plainly() -> None:
    with pytest.raises(UnknownTypeError, match=r"^unknown ggml type 'zzzzzz'$"):
        lookup("zzzzzz")


def test_unknown_type_id() -> None:
    with pytest.raises(UnknownTypeError, match="unknown ggml type id 99"):
        by_id(99)
    assert by_id(8).name == "q8_0"


def test_weight_and_kv_cache_capabilities() -> None:
    assert weight_type("int4").name == "q4_0"
    assert kv_cache_type("int8").name == "q8_0"
    assert {t.name for t in TYPES if t.kv_cache} == {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl",
                                                    "q5_0", "q5_1"}
    with pytest.raises(UnknownTypeError, match="'q4_k' is not a KV-cache type"):
        kv_cache_type("q4_k")
    with pytest.raises(UnknownTypeError, match="'q8_1' is not a weight type"):
        weight_type("q8_1")


def test_tensor_bytes_counts_whole_blocks_per_row() -> None:
    q8 = lookup("q8_0")
    assert q8.tensor_bytes((576, 1536)) == 576 // 32 * 34 * 1536
    assert lookup("f32").tensor_bytes((576,)) == 2304
    with pytest.raises(ValueError, match="do not fill whole q4_k blocks"):
        lookup("q4_k").tensor_bytes((576, 2))


def test_table_has_one_entry_per_name_and_id() -> None:
    assert len(ggml_types.BY_NAME) == len(ggml_types.BY_ID) == len(TYPES)
