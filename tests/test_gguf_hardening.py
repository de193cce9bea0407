"""The header reader against hostile files: every class of crash the fuzzer found is one GgprecError
with an exact, escaped, bounded message. The files are small GGUFs written here with gguf-py."""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import CorruptGGUFError, GgprecError, safe_text
from ggprec.gguf_info import read_gguf

CORRUPT = r"corrupt GGUF header at offset \d+: "


def write_model(path: Path, kv: dict[str, tuple[Any, Any]] | None = None,
                tensors: list[tuple[str, tuple[int, ...]]] | None = None) -> Path:
    """A one-layer llama GGUF (f32, 32-wide); `kv`: key -> (value, GGUFValueType) replacing or adding a
    key; `tensors`: (name, numpy shape) instead of the default two."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(1)
    w.add_context_length(64)
    for key, (value, vtype) in (kv or {}).items():
        w.add_key_value(key, value, vtype, gguf.GGUFValueType.UINT32 if isinstance(value, list) else None)
    for name, shape in tensors or [("token_embd.weight", (8, 32)), ("blk.0.attn_q.weight", (32, 32))]:
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def message(path: Path) -> str:
    with pytest.raises(GgprecError) as e:
        read_gguf(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ")
    return text[len(f"{path}: "):]


def vt(name: str) -> Any:
    import gguf

    return getattr(gguf.GGUFValueType, name)


def test_a_valid_small_model_reads(tmp_path: Path) -> None:
    info = read_gguf(write_model(tmp_path / "ok.gguf"))
    assert (info.hparams.n_layer, info.hparams.n_embd, info.hparams.n_head) == (1, 32, 1)


@pytest.mark.parametrize(("key", "value", "vtype", "expected"), [
    ("llama.block_count", "30", "STRING", "metadata llama.block_count is string '30', expected an integer"),
    ("llama.embedding_length", 576.0, "FLOAT32", "metadata llama.embedding_length is float 576.0, expected an integer"),
    ("llama.context_length", True, "BOOL", "metadata llama.context_length is bool True, expected an integer"),
    ("llama.feed_forward_length", -1, "INT32", "metadata llama.feed_forward_length is integer -1, expected 0 to "
                                               "4,294,967,295"),
])
def test_a_hyper_parameter_of_the_wrong_type(tmp_path: Path, key: str, value: Any, vtype: str, expected: str) -> None:
    assert message(write_model(tmp_path / "m.gguf", {key: (value, vt(vtype))})) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_where_an_integer_is_expected(tmp_path: Path, value: float) -> None:
    path = write_model(tmp_path / "m.gguf", {"llama.attention.head_count": (value, vt("FLOAT32"))})
    assert message(path) == f"metadata llama.attention.head_count is float {value!r} (NaN or inf), expected an integer"


def test_a_scalar_where_the_token_list_is_expected(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", {"tokenizer.ggml.tokens": (5, vt("UINT32"))})
    assert message(path) == "metadata tokenizer.ggml.tokens is integer 5, expected a list of strings"


def test_a_per_layer_list_of_the_wrong_length(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", {"llama.attention.head_count_kv": ([1, 1, 1], vt("ARRAY"))})
    assert message(path) == ("metadata llama.attention.head_count_kv is array of 3, expected 1 values "
                             "(one per layer)")


def test_deeply_nested_arrays(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "deep.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_array("odd.deep", [[[[1]]]])  # 4 levels of arrays
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    text = message(path)
    assert text.startswith("corrupt GGUF header at offset ")
    assert text.endswith(": odd.deep nests arrays deeper than 3 levels")
    w = gguf.GGUFWriter(tmp_path / "ok.gguf", "llama")
    w.add_array("odd.nested", [[[1, 2]], [[3]]])  # 3 levels: what gguf-py writes, still accepted
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert read_gguf(tmp_path / "ok.gguf").metadata["odd.nested"] == [[[1, 2]], [[3]]]


def test_a_layer_number_of_thousands_of_digits(tmp_path: Path) -> None:
    name = "blk." + "9" * 5000 + ".attn_q.weight"
    text = message(write_model(tmp_path / "m.gguf", tensors=[(name, (32, 32))]))
    assert text.endswith(": tensor blk.99999999999999999999999999999999999999999999999999999999999999999999999999999"
                         "999999999999999999999999999999999999999... (5,018 characters) has a layer number of 5000 "
                         "digits")


def test_a_layer_beyond_block_count(tmp_path: Path) -> None:
    text = message(write_model(tmp_path / "m.gguf", tensors=[("blk.999999.attn_q.weight", (32, 32))]))
    assert text == "tensor blk.999999.attn_q.weight is in layer 999999, but llama.block_count is 1"


def test_a_huge_block_count(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", {"llama.block_count": (200_000_000, vt("UINT32"))})
    assert message(path) == "metadata llama.block_count is integer 200000000, expected 0 to 4,096"


def test_a_string_longer_than_the_limit(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", {"general.description": ("x" * (2 << 20), vt("STRING"))})
    assert message(path).endswith(": general.description is 2,097,152 bytes long (at most 1,048,576 accepted)")


def test_a_string_length_beyond_the_file(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 24, 2**62)  # the first key's length
    path.write_bytes(bytes(data))
    assert message(path) == "corrupt GGUF header at offset 32: metadata key 0 runs past the end of the file"


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    evil = "evil\n\x1b[2J\x00name.weight"
    path = write_model(tmp_path / "m.gguf", tensors=[(evil, (8, 32))])
    data = bytearray(path.read_bytes())
    type_at = data.index(evil.encode()) + len(evil) + 4 + 2 * 8  # name, n_dims, 2 dimensions
    struct.pack_into("<I", data, type_at, 99)
    path.write_bytes(bytes(data))
    assert message(path) == "tensor evil\\x0a\\x1b[2J\\x00name.weight has unknown ggml type id 99"


def test_last_resort_any_parser_exception_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ggprec.gguf_info

    def broken(name: str) -> tuple[str, int | None]:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(ggprec.gguf_info, "classify", broken)
    path = write_model(tmp_path / "m.gguf")
    with pytest.raises(CorruptGGUFError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: corrupt GGUF header at offset {e.value.offset}: RuntimeError: a bug\\x0awith a " \
                           "second line"
    assert e.value.offset > 24


def test_inspect_of_a_bad_file_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = write_model(tmp_path / "bad.gguf", {"llama.embedding_length": (math.nan, vt("FLOAT32"))})
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (f"ggprec: error: {path}: metadata llama.embedding_length is float nan (NaN or inf), "
                             "expected an integer\n")
    exe = shutil.which("ggprec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert exe, "the ggprec console script is installed"
    done = subprocess.run([exe, "inspect", str(path)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", result.stderr)


def test_safe_text_escapes_and_cuts() -> None:
    assert safe_text("plain name") == "plain name"
    assert safe_text("a\nb\x00c\x1bd\x7fe\x9bf\u2028g") == "a\\x0ab\\x00c\\x1bd\\x7fe\\x9bf\\u2028g"
    assert safe_text("x" * 500, limit=10) == "xxxxxxxxxx... (500 characters)"
    assert safe_text("ünïcødé") == "ünïcødé"


def test_a_string_list_too_long_to_step_over(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    count_at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4
    struct.pack_into("<Q", data, count_at, 2_000_000)
    path.write_bytes(bytes(data))
    os.truncate(path, 64 << 20)  # room for 2M empty strings: the file-size bound alone would allow them
    assert message(path) == (f"corrupt GGUF header at offset {count_at + 8}: tokenizer.ggml.tokens has 2,000,000 "
                             "elements (at most 1,048,576 accepted)")
