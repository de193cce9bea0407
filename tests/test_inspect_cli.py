"""`ggprec inspect`: the summary, the JSON document (schema in docs/json.md), and one clear line for
every kind of bad file.

Corrupt files are the tiny synthetic model with bytes patched at offsets computed from the GGUF format:
magic u32 @0, version u32 @4, tensor count u64 @8, metadata count u64 @16, then key-value pairs
(key: u64 length + bytes, value type u32, value), then tensor infos (name: u64 length + bytes,
n_dims u32, n_dims x u64 dims, ggml type u32, data offset u64), then the aligned data region.
gguf-py's reader (an independent parser) tells where each record starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.inspection import INSPECT_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> Any:
    # A fixed width, so rich lays the tables out the same whatever terminal runs the tests.
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "120"})


# --- the happy path ------------------------------------------------------------------------------


def test_summary_of_smollm2(demo_model: Path) -> None:
    result = run_cli("inspect", str(demo_model))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"architecture\s+│ llama", out)
    assert re.search(r"layers\s+│ 30 ", out)
    assert re.search(r"heads / kv heads\s+│ 9 / 3 ", out)
    assert re.search(r"vocabulary\s+│ 49,152 ", out)
    assert "tied to token_embd" in out
    assert re.search(r"tensors\s+│ 272 ", out)
    assert "Tensors" not in out  # the full table only with --tensors


def test_tensors_flag_lists_every_tensor(tiny_model: Path) -> None:
    result = run_cli("inspect", "--tensors", str(tiny_model))
    assert result.exit_code == 0, result.output
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"):
        assert name in result.stdout
    assert re.search(r"blk\.1\.ffn_down\.weight\s+│ ffn_down\s+│\s+1 │ 512x256\s+│ f16\s+│ 262,144", result.stdout)


# --- the JSON document ---------------------------------------------------------------------------

# The documented schema (docs/json.md, `ggprec inspect --json`): key -> type(s). `None` in a tuple means
# the value may be null.
TOP_LEVEL: dict[str, Any] = {
    "schema": int, "path": str, "shards": list, "file_size": int, "gguf_version": int, "architecture": str,
    "name": (str, None), "hparams": dict, "tied_output": bool, "n_tensors": int, "n_params": int,
    "tensor_bytes": int, "bits_per_weight": float, "n_params_active": int, "bytes_per_token": dict,
    "totals": dict, "metadata": dict, "tensors": list,
}
HPARAMS: dict[str, Any] = {
    "n_layer": int, "n_embd": int, "n_head": int, "n_head_kv": int, "n_head_kv_per_layer": list,
    "head_dim_k": int, "head_dim_v": int, "n_ff": int, "n_vocab": int, "n_ctx_train": int,
    "sliding_window": (int, None), "n_expert": int, "n_expert_used": int, "n_expert_shared": int, "n_ff_exp": int,
    "n_ff_shexp": int, "n_layer_dense_lead": int, "q_lora_rank": int, "kv_lora_rank": int,
}
TOTAL_ROW: dict[str, Any] = {"tensors": int, "params": int, "bytes": int}
TENSOR: dict[str, Any] = {
    "name": str, "role": str, "layer": (int, None), "shape": list, "type": str, "bytes": int, "offset": int,
    "shard": int,
}


def check_object(obj: Any, spec: dict[str, Any], where: str) -> None:
    assert isinstance(obj, dict), where
    assert set(obj) == set(spec), f"{where}: keys {sorted(set(obj) ^ set(spec))} differ from the schema"
    for key, kinds in spec.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        value = obj[key]
        ok = any(value is None if k is None else isinstance(value, k) and not (k is int and isinstance(value, bool))
                 for k in kinds)
        assert ok, f"{where}.{key} = {value!r} is not {kinds}"


def check_inspect_document(doc: Any) -> None:
    check_object(doc, TOP_LEVEL, "$")
    assert doc["schema"] == INSPECT_SCHEMA == 1
    check_object(doc["hparams"], HPARAMS, "$.hparams")
    assert all(isinstance(n, int) for n in doc["hparams"]["n_head_kv_per_layer"])
    assert set(doc["totals"]) == {"role", "layer", "type"}
    for key, rows in doc["totals"].items():
        for row in rows:
            check_object(row, {key: (int, None) if key == "layer" else str, **TOTAL_ROW}, f"$.totals.{key}[]")
    for t in doc["tensors"]:
        check_object(t, TENSOR, "$.tensors[]")
        assert all(isinstance(d, int) for d in t["shape"])
    for key, value in doc["metadata"].items():
        if isinstance(value, dict):  # a long array, summarised
            check_object(value, {"array_of": str, "count": int}, f"$.metadata.{key}")


def test_json_follows_the_documented_schema(demo_model: Path) -> None:
    result = run_cli("inspect", "--json", str(demo_model))
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    check_inspect_document(doc)
    assert doc["architecture"] == "llama" and doc["n_tensors"] == len(doc["tensors"]) == 272
    assert doc["hparams"]["n_head_kv"] == 3 and doc["hparams"]["n_vocab"] == 49152
    assert doc["tied_output"] is True
    assert doc["tensor_bytes"] == sum(t["bytes"] for t in doc["tensors"]) == doc["file_size"] - 1785664
    assert doc["metadata"]["tokenizer.ggml.tokens"] == {"array_of": "string", "count": 49152}
    assert doc["metadata"]["llama.embedding_length"] == 576


def test_every_schema_key_is_documented() -> None:
    text = (ROOT / "docs" / "json.md").read_text()
    section = text.split("## `ggprec inspect --json`", 1)[1].split("\n## ", 1)[0]
    for key in [*TOP_LEVEL, *HPARAMS, *TOTAL_ROW, *TENSOR, "array_of", "count"]:
        assert f"`{key}`" in section, f"{key} missing from docs/json.md"


# --- fast start ----------------------------------------------------------------------------------

HEAVY = ("llama_cpp", "numpy", "rich", "gguf", "matplotlib")
# ggprec modules only some commands need: the CLI's choices for --kind and --preset are read when used.
OTHER_COMMANDS = ("ggprec.records", "ggprec.synth", "ggprec.store")


def modules_imported_by(*args: str, watch: tuple[str, ...] = HEAVY) -> list[str]:
    code = (
        "import sys\nfrom ggprec.cli import main\n"
        f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass\n"
        f"print('imported:' + ','.join(m for m in {watch!r} if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("imported:"), done.stderr
    return [m for m in last.removeprefix("imported:").split(",") if m]


def test_help_imports_no_heavy_module() -> None:
    assert modules_imported_by("--help") == []


def test_inspect_json_imports_no_heavy_module(tiny_model: Path) -> None:
    assert modules_imported_by("inspect", "--json", str(tiny_model)) == []


def test_inspect_imports_no_module_of_other_commands(tiny_model: Path) -> None:
    assert modules_imported_by("inspect", "--json", str(tiny_model), watch=OTHER_COMMANDS) == []


def test_a_lazily_read_choice_still_refuses_an_unknown_name_in_one_line() -> None:
    r = CliRunner().invoke(main, ["history", "--kind", "bogus"])
    assert r.exit_code == 2 and "'bogus' is not one of 'run'," in r.output


# --- bad input: one line on stderr, exit code 2, no traceback ------------------------------------


@pytest.fixture(scope="module")
def layout(tiny_model: Path) -> dict[str, int]:
    """Byte offsets inside the tiny model's header, from gguf-py's independent reader."""
    import gguf

    reader = gguf.GGUFReader(tiny_model)
    first = reader.tensors[0]  # token_embd.weight, 2 dims
    name_len = len(first.name.encode())
    n_dims = len(first.shape)
    tensor_info = first.field.offset
    type_at = tensor_info + 8 + name_len + 4 + 8 * n_dims
    tokens = reader.fields["tokenizer.ggml.tokens"]
    return {
        "first_key": 24,
        "tensor_info": tensor_info,
        "tensor_n_dims": tensor_info + 8 + name_len,
        "tensor_type": type_at,
        "tensor_offset": type_at + 4,
        # key length u64 + key + value type u32 + element type u32, then the element count u64
        "tokens_count": tokens.offset + 8 + len(tokens.name.encode()) + 4 + 4,
        "data_offset": reader.data_offset,
        "size": tiny_model.stat().st_size,
    }


def patched(src: Path, dst: Path, at: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, at, value)
    dst.write_bytes(bytes(data))
    return dst


def truncated(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def test_layout_is_what_the_format_says(tiny_model: Path, layout: dict[str, int]) -> None:
    data = tiny_model.read_bytes()
    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3
    assert struct.unpack_from("<Q", data, layout["tensor_info"])[0] == len(b"token_embd.weight")
    assert struct.unpack_from("<I", data, layout["tensor_n_dims"])[0] == 2
    assert struct.unpack_from("<I", data, layout["tensor_type"])[0] == 1  # f16
    assert struct.unpack_from("<Q", data, layout["tensor_offset"])[0] == 0  # first in the data region
    assert struct.unpack_from("<Q", data, layout["tokens_count"])[0] == 1024


BadFile = Callable[[Path, Path, dict[str, int]], Path]

CORRUPT = r"corrupt GGUF header at offset \d+: "

BAD_FILES: dict[str, tuple[BadFile, str]] = {
    "missing file": (lambda src, d, lay: d / "nope.gguf", r"no such file"),
    "directory": (lambda src, d, lay: d, r"is a directory, not a GGUF file"),
    "empty file": (lambda src, d, lay: truncated(src, d / "x.gguf", 0), r"empty file, not a GGUF model"),
    "non-GGUF magic": (lambda src, d, lay: patched(src, d / "x.gguf", 0, "<4s", b"GGML"),
                       r"not a GGUF file \(bad magic\)"),
    "unsupported version": (lambda src, d, lay: patched(src, d / "x.gguf", 4, "<I", 4),
                            r"unsupported GGUF version 4 \(supported: 2, 3\)"),
    "big-endian file": (lambda src, d, lay: patched(src, d / "x.gguf", 4, ">I", 3),
                        r"big-endian GGUF file: llama\.cpp on this machine reads little-endian files only"),
    "truncated header": (lambda src, d, lay: truncated(src, d / "x.gguf", lay["tensor_info"] + 4),
                         CORRUPT + r"tensor name 0 length runs past the end of the file"),
    "truncated tensor data": (lambda src, d, lay: truncated(src, d / "x.gguf", lay["size"] - 1),
                              r"truncated tensor data: output_norm\.weight ends at byte \d+, file has \d+"),
    "absurd tensor count": (lambda src, d, lay: patched(src, d / "x.gguf", 8, "<Q", 2**62),
                            CORRUPT + r"absurd counts \(4611686018427387904 tensors, \d+ metadata keys\)"),
    "absurd metadata count": (lambda src, d, lay: patched(src, d / "x.gguf", 16, "<Q", 2**62),
                              CORRUPT + r"absurd counts \(\d+ tensors, 4611686018427387904 metadata keys\)"),
    "absurd string length": (lambda src, d, lay: patched(src, d / "x.gguf", lay["first_key"], "<Q", 2**60),
                             CORRUPT + r"metadata key 0 runs past the end of the file"),
    "absurd array length": (lambda src, d, lay: patched(src, d / "x.gguf", lay["tokens_count"], "<Q", 2**61),
                            CORRUPT + r"tokenizer\.ggml\.tokens runs past the end of the file"),
    "absurd dimension count": (lambda src, d, lay: patched(src, d / "x.gguf", lay["tensor_n_dims"], "<I", 2**31),
                               CORRUPT + r"tensor token_embd\.weight has 2147483648 dimensions"),
    "tensor offset past end of file": (
        lambda src, d, lay: patched(src, d / "x.gguf", lay["tensor_offset"], "<Q", lay["size"]),
        r"tensor token_embd\.weight starts past the end of the file \(offset \d+, size \d+\)"),
    "unknown ggml type id": (lambda src, d, lay: patched(src, d / "x.gguf", lay["tensor_type"], "<I", 99),
                             r"tensor token_embd\.weight has unknown ggml type id 99"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gives_one_line_and_exit_code_2(
    case: str, tiny_model: Path, layout: dict[str, int], tmp_path: Path
) -> None:
    make, message = BAD_FILES[case]
    path = make(tiny_model, tmp_path, layout)
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)]):
        result = run_cli(*args)
        assert result.exit_code == 2, (case, result.output, result.exception)
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr
        assert re.fullmatch(rf"ggprec: error: {re.escape(str(path))}: .*{message}\n", result.stderr), result.stderr
        assert "Traceback" not in result.output


def test_bad_file_in_a_real_process(tmp_path: Path) -> None:
    exe = shutil.which("ggprec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert exe, "the ggprec console script is installed"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    done = subprocess.run([exe, "inspect", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"ggprec: error: {bad}: not a GGUF file (bad magic)\n"


def test_json_of_odd_metadata_is_still_valid_json(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_float32("odd.nan", float("nan"))
    w.add_float32("odd.inf", float("inf"))
    w.add_array("odd.nested", [[1, 2], list(range(5000))])
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result = run_cli("inspect", "--json", str(path))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    check_inspect_document(doc)
    md = doc["metadata"]
    assert md["odd.nan"] is None and md["odd.inf"] is None
    assert md["odd.nested"] == [[1, 2], {"array_of": "int32", "count": 5000}]
    assert doc["architecture"] == "llama" and doc["hparams"]["n_layer"] == 0
    assert run_cli("inspect", "--tensors", str(path)).exit_code == 0  # the tables cope with no layers


def test_a_mixture_of_experts_reports_active_parameters_and_bytes_read_per_token(tiny_moe: Path) -> None:
    """tiny-moe: 4 experts of 256, 2 used; one token reads half the expert bytes and one token_embd row."""
    doc = json.loads(run_cli("inspect", "--json", str(tiny_moe)).stdout)
    check_inspect_document(doc)
    exps = [t for t in doc["tensors"] if t["role"] in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")]
    assert len(exps) == 6 and all(t["shape"] == ([256, 256, 4]) for t in exps)
    assert doc["n_params_active"] == doc["n_params"] - sum(256 * 256 * 4 for _ in exps) // 2
    f16 = [t for t in doc["tensors"] if t["type"] == "f16"]
    embd = 256 * 1024 * 2
    assert doc["bytes_per_token"]["f16"] == sum(t["bytes"] for t in f16) - sum(t["bytes"] for t in exps) // 2 \
        - embd + 256 * 2
    assert (doc["hparams"]["n_expert"], doc["hparams"]["n_expert_used"], doc["hparams"]["n_ff_exp"]) == (4, 2, 256)
