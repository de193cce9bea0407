"""Collecting an importance matrix with llama.cpp, by llama.cpp's own rules (`tools/imatrix`).

The model runs over a calibration text in chunks of n_ctx tokens (the first token of each chunk made BOS
when the tokenizer adds one), asking for the output of every position: asked for only some, llama.cpp
trims the last layer's feed-forward to those rows and its weights would never be seen. ggml's scheduler
calls the context's `cb_eval` twice per graph node: "do you want it?" (ask), then with the computed
node. Wanted are matrix products whose weight (src[0]) is a `blk.*` weight: MUL_MAT with at least 16
F32 activation rows (smaller batches are skipped, as llama.cpp does), and every MUL_MAT_ID (routed
experts, the expert of each token and slot in src[2]). For each, the activations (src[1]) are copied
out with ggml_backend_tensor_get and their squares summed per input column; a dense weight keeps one
count (activation rows seen), an expert weight one sum and one count per expert.

The callback reads `struct ggml_tensor` through a ctypes mirror whose size is checked against
`ggml_tensor_overhead()` at start-up, so a llama.cpp with another layout is a one-line error, not
garbage. Nothing raises inside the callback: a failure is kept and raised after the decode.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import interrupts
from .errors import GgprecError, safe_text
from .imatrix_file import Imatrix, ImatrixEntry, read_imatrix, write_imatrix
from .progress import Progress

if TYPE_CHECKING:
    import numpy as np

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64
GGML_OBJECT_SIZE = 32  # struct ggml_object, which precedes every tensor in a ggml context
GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26
MIN_ROWS = 16  # llama.cpp's imatrix ignores matrix products of fewer activation rows
OP_NAMES = ("MUL_MAT", "MUL_MAT_ID")
_OP_IDS = {"MUL_MAT": 29, "MUL_MAT_ID": 30}  # enum ggml_op of the vendored ggml, checked at start-up


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h of the vendored llama.cpp)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def check_layout() -> None:
    """Refuse a ggml whose tensor struct or op numbering differs from the mirror above (one line)."""
    from .ggml_lib import base

    lib = base()
    want = lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
    if ctypes.sizeof(GgmlTensor) != want:
        raise GgprecError(f"this llama.cpp's struct ggml_tensor is {want} bytes, ggprec's mirror "
                          f"{ctypes.sizeof(GgmlTensor)}: importance matrices cannot be collected with it")
    for name, op in _OP_IDS.items():
        got = lib.ggml_op_name(op)
        if got != name.encode():
            raise GgprecError(f"this llama.cpp numbers its ops differently (op {op} is {got!r}, not {name}): "
                              "importance matrices cannot be collected with it")


def weight_name(raw: bytes) -> str:
    """A weight's name without the backend prefix and copy suffix llama.cpp may add:
    `CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight`."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


@dataclass
class _Stats:
    sums: np.ndarray  # [n_mat, n_in] float64
    counts: np.ndarray  # [n_mat] int64


@dataclass
class Collector:
    """The state behind the cb_eval callback: running sums per weight, and the first failure."""

    stats: dict[str, _Stats] = field(default_factory=dict)
    error: str | None = None
    calls: int = 0

    def wants(self, t: GgmlTensor) -> bool:
        if t.op == _OP_IDS["MUL_MAT_ID"]:
            return True
        if t.op != _OP_IDS["MUL_MAT"]:
            return False
        src0, src1 = t.src[0].contents, t.src[1].contents
        if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
            return False
        return weight_name(src0.name).startswith("blk.")

    def collect(self, t: GgmlTensor) -> None:
        self.calls += 1
        if t.op == _OP_IDS["MUL_MAT_ID"]:
            self._collect_experts(t)
        else:
            self._collect_dense(t)

    def _collect_dense(self, t: GgmlTensor) -> None:
        import numpy as np

        src0, src1 = t.src[0].contents, t.src[1].contents
        name = weight_name(src0.name)
        n_mat = src0.ne[2] * src0.ne[3]
        x = _as_array(src1, np.float32)  # [ne3, ne2, ne1, ne0]
        st = self._entry(name, n_mat, src1.ne[0], 1)
        sq = np.einsum("abij,abij->abj", x, x, dtype=np.float64)  # [ne3, ne2, ne0]: rows summed
        for i3 in range(src1.ne[3]):
            for i2 in range(src1.ne[2]):
                # 3-D activations against a 2-D weight are flattened onto it, as llama.cpp does
                st.sums[(i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])] += sq[i3, i2]
        st.counts += (src1.ne[1] * src1.ne[2] * src1.ne[3]) // n_mat  # one count per dense weight: rows seen

    def _collect_experts(self, t: GgmlTensor) -> None:
        import numpy as np

        src0, src1, ids_t = t.src[0].contents, t.src[1].contents, t.src[2].contents
        name = weight_name(src0.name)
        n_as, n_in = src0.ne[2], src1.ne[0]
        if src1.ne[3] != 1 or ids_t.ne[1] != src1.ne[2] or src1.type != GGML_TYPE_F32:
            raise GgprecError(f"{safe_text(name)}: activations of an unexpected shape for an expert product")
        x = _as_array(src1, np.float32)[0]  # [n_tokens, ne1, n_in]
        ids = _as_array(ids_t, np.int32)[0, 0]  # [n_tokens, n_expert_used]
        if ids.size and (ids.min() < 0 or ids.max() >= n_as):
            raise GgprecError(f"{safe_text(name)}: expert id out of range")
        st = self._entry(name, n_as, n_in, n_as)
        for slot in range(ids.shape[1]):
            rows = x[:, slot % x.shape[1], :].astype(np.float64)
            np.add.at(st.sums, ids[:, slot], rows * rows)
            st.counts += np.bincount(ids[:, slot], minlength=n_as)

    def _entry(self, name: str, n_mat: int, n_in: int, n_counts: int) -> _Stats:
        import numpy as np

        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = _Stats(np.zeros((n_mat, n_in)), np.zeros(n_counts, dtype=np.int64))
        elif st.sums.shape != (n_mat, n_in):
            raise GgprecError(f"{safe_text(name)}: inconsistent sizes {st.sums.shape} vs {(n_mat, n_in)}")
        return st

    def to_imatrix(self, datasets: list[str], chunk_count: int, chunk_size: int) -> Imatrix:
        import numpy as np

        entries = {}
        for name in sorted(self.stats):
            st = self.stats[name]
            if not np.isfinite(st.sums).all():
                raise GgprecError(f"non-finite activations in {safe_text(name)}: the model overflows on this text")
            entries[name] = ImatrixEntry(st.sums.astype(np.float32), st.counts.astype(np.float32))
        return Imatrix(entries, datasets, chunk_count, chunk_size)


def _as_array(t: GgmlTensor, dtype: Any) -> np.ndarray:
    """The tensor's data copied to the host, viewed [ne3, ne2, ne1, ne0] through its byte strides."""
    import numpy as np

    from .ggml_lib import base

    lib = base()
    addr = ctypes.addressof(t)
    n = lib.ggml_nbytes(addr)
    buf = np.empty(n, dtype=np.uint8)
    lib.ggml_backend_tensor_get(addr, buf.ctypes.data, 0, n)
    shape = tuple(t.ne[i] for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(t.nb[i] for i in reversed(range(GGML_MAX_DIMS)))
    return np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)


def make_callback(collector: Collector) -> Any:
    """The ctypes cb_eval function over `collector` (keep it referenced while the context lives)."""
    from .llama_bindings import load
    llama_cpp = load()

    cb_type = dict(llama_cpp.llama_context_params._fields_)["cb_eval"]

    @interrupts.callback
    def on_eval(tensor: int, ask: bool, user: int) -> bool:
        # Never raise here: C called us. A failure is kept, collection stops, and the caller raises it.
        if collector.error is not None:
            return not ask
        try:
            t = GgmlTensor.from_address(tensor)
            if ask:
                return collector.wants(t)
            collector.collect(t)
        except BaseException as e:  # noqa: BLE001 - reported after the decode
            collector.error = str(e) if isinstance(e, GgprecError) else f"{type(e).__name__}: {e}"
            return not ask
        return True

    return cb_type(on_eval)


# --- the calibration text and the chunks --------------------------------------------------------------------


def calibration_text() -> str:
    """The calibration text shipped with ggprec (ggprec/data/calibration.txt; not the evaluation text)."""
    from importlib.resources import files

    return (files("ggprec") / "data" / "calibration.txt").read_text(encoding="utf-8")


def chunk_tokens(tokens: list[int], n_ctx: int, chunks: int | None, bos: int | None) -> list[list[int]]:
    """llama.cpp's chunks: consecutive n_ctx-token slices (at most `chunks`), the first token of each
    replaced by BOS when the tokenizer adds one. Too short a text is a one-line error."""
    if n_ctx < MIN_ROWS:
        raise GgprecError(f"a context of {n_ctx} tokens is too small for an importance matrix (at least {MIN_ROWS})")
    if chunks is not None and chunks < 1:
        raise GgprecError(f"chunks must be at least 1 (got {chunks})")
    n_max = len(tokens) // n_ctx
    if n_max < 1:
        raise GgprecError(f"the text gives {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    out = []
    for i in range(min(n_max, chunks) if chunks is not None else n_max):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def collect_imatrix(model_path: str | os.PathLike[str], text: str | None = None, n_ctx: int = 512,
                    chunks: int | None = None, threads: int | None = None, progress: Progress | None = None,
                    dataset: str | None = None) -> Imatrix:
    """An importance matrix of the model at `model_path` over `text` (default: the shipped calibration
    text) in chunks of n_ctx tokens (`chunks` of them, default all the text gives). `dataset` is the
    name recorded in the file (default: the text's origin). progress("imatrix", chunk, chunks)."""
    from .llama_backend import bos_token, load_model, tokenize
    from .settings import RuntimeSettings

    check_layout()
    if text is None:
        text, dataset = calibration_text(), dataset or "ggprec calibration.txt"
    collector = Collector()
    callback = make_callback(collector)
    batch = min(n_ctx, 512) if n_ctx >= MIN_ROWS else n_ctx
    settings = RuntimeSettings(n_ctx=n_ctx, n_batch=batch, n_ubatch=batch, n_threads=threads)
    with load_model(model_path, settings, cb_eval=callback) as loaded:
        tokens = tokenize(loaded.model, text, add_bos=True)
        work = chunk_tokens(tokens, n_ctx, chunks, bos_token(loaded.model))
        if progress is not None:
            progress("imatrix", 0, len(work))
        for i, chunk in enumerate(work):
            loaded.decode_all(chunk)
            if collector.error is not None:
                raise GgprecError(f"collecting the importance matrix failed: {collector.error}")
            if progress is not None:
                progress("imatrix", i + 1, len(work))
    if not collector.stats:
        raise GgprecError(f"{model_path}: no matrix product of a blk.* weight was seen (not a transformer?)")
    return collector.to_imatrix([dataset or "text"], len(work), n_ctx)


def cache_dir() -> Path:
    from .demo_model import cache_dir as root

    return root() / "imatrix"


def cached_imatrix_path(model_path: str | os.PathLike[str], text: str | None = None, n_ctx: int = 512,
                        chunks: int | None = None) -> Path:
    """Where cached_imatrix keeps (or will keep) this model's importance matrix for these inputs."""
    from .hashing import model_sha256

    body = calibration_text() if text is None else text
    key_text = hashlib.sha256(f"{n_ctx}\0{chunks}\0".encode() + body.encode()).hexdigest()[:16]
    return cache_dir() / f"{model_sha256(model_path)[:16]}-{key_text}.imatrix.gguf"


def recommend_imatrix(model_path: str | os.PathLike[str], choice: str | None,
                      notice: Callable[[str], None] | None = None, threads: int | None = None,
                      progress: Progress | None = None) -> str | None:
    """The importance matrix recommend plans with (`recommend --imatrix`): a file as given; `auto`: the
    cached one, collected now (calibration text, all its chunks) when there is none; `none`: none; not given:
    the cached one when an earlier `auto` left one, else none, and `notice` says how to get one.
    Why not collect by default: with an importance matrix the error proxy is measured and fitted again
    (weighted columns, passes quantized with it), so the first plan of a model costs the collection (about
    40 s on the 135M-270M models here, minutes at 8B) plus a second fit; a stated `auto` pays it once."""
    from .kv_loss import runnable_here

    if choice is not None and choice not in ("auto", "none"):
        return choice
    if choice == "none" or not runnable_here(Path(model_path)):
        if choice == "auto":
            raise GgprecError(f"{model_path}: collecting an importance matrix needs the model's weights on disk")
        return None
    path = cached_imatrix_path(model_path)
    if choice is None:
        if path.is_file():
            if notice:
                notice(f"using this model's cached importance matrix {path} (`--imatrix none`: without it)")
            return str(path)
        if notice:
            notice("no importance matrix for this model: the i-quant types are not offered; `--imatrix auto` "
                   "collects one here once (cached, and used by later runs) or give `--imatrix FILE`")
        return None
    if notice and not path.is_file():
        notice("collecting this model's importance matrix once (calibration text; cached for later runs)")
    return str(cached_imatrix(model_path, threads=threads, progress=progress))


def cached_imatrix(model_path: str | os.PathLike[str], text: str | None = None, n_ctx: int = 512,
                   chunks: int | None = None, threads: int | None = None, progress: Progress | None = None) -> Path:
    """The importance matrix of `model_path` over `text` as a GGUF file in `cache_dir()`, collected once
    per model sha256 + text + n_ctx + chunks and reused after (a file that no longer reads is redone)."""

    path = cached_imatrix_path(model_path, text, n_ctx, chunks)
    if path.is_file():
        try:
            read_imatrix(path)
            return path
        except GgprecError:
            pass
    imx = collect_imatrix(model_path, text, n_ctx, chunks, threads, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_imatrix(imx, path, force=True)
