"""The KLD a quantized KV cache adds on the model at hand, measured with llama.cpp (measure stack).

`priors.kv_prior` is what the cache costs on other models; this measures it on this one, once per model
(cached by sha256), in a child process so that a llama.cpp crash cannot take the caller with it. recommend
takes the result as `kv_measured` (it wins over the prior).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import GgprecError
from .ggml_types import lookup
from .priors import Prior

KV_WINDOWS = 2
KV_CACHE_FORMAT = 2


def runnable_here(path: Path) -> bool:
    """Whether the file can be evaluated here at all: a GGUF with its tensor data on disk (a sparse file,
    such as ggprec synth --sparse writes for memory work, holds no weights worth evaluating)."""
    from .gguf_info import read_gguf

    try:
        read_gguf(path)
        st = path.stat()
    except (GgprecError, OSError):
        return False
    return not (hasattr(st, "st_blocks") and st.st_blocks * 512 < st.st_size // 2)


def kv_cache_path(sha256: str, kv_types: tuple[str, ...], chunks: int, n_ctx: int) -> Path:
    from .llama_bindings import load
    llama_cpp = load()

    from .demo_model import cache_dir

    key = f"{sha256[:32]}-{'+'.join(kv_types)}-{chunks}x{n_ctx}-lcp{llama_cpp.__version__}-f{KV_CACHE_FORMAT}"
    return cache_dir() / "kv-loss" / f"{key}.json"


def measure_kv_loss(model_path: str | os.PathLike[str], kv_types: tuple[str, ...] = ("q8_0", "q4_0"),
                    chunks: int = KV_WINDOWS, n_ctx: int = 512, threads: int | None = None,
                    timeout_s: float | None = None, notice: Callable[[str], None] | None = None
                    ) -> dict[str, Prior] | None:
    """The KLD a quantized KV cache adds on this very model: one evaluation per KV type of the model against
    itself with an f16 cache (flash attention on, as a quantized V cache needs), `chunks` windows of
    n_ctx tokens of the shipped text, less what flash attention alone changes (one more evaluation with an
    f16 cache and flash attention: on the quantized SmolLM2 file that alone is a KLD of ~0.003, ten times
    the q8_0 cache's own share). Cached in ggprec's cache by the model's sha256, so it is measured once.
    None, quickly, for a file that cannot be evaluated here (sparse, unreadable, or llama.cpp refuses or
    crashes on it: the evaluation runs in a child process); the caller then uses kv_prior. notice: told once
    before a measurement starts (it takes about a minute on a 135M model on 2 cores)."""
    from .fileio import atomic_write_text
    from .hashing import model_sha256

    path = Path(model_path)
    kv_types = tuple(lookup(k).name for k in kv_types)
    if not runnable_here(path):
        return None
    cache = kv_cache_path(model_sha256(path), kv_types, chunks, n_ctx)
    doc = None
    if cache.is_file():
        try:
            doc = json.loads(cache.read_text())
        except (OSError, ValueError):
            doc = None  # damaged: measure again
    if doc is None:
        if notice is not None:
            notice(f"measuring the loss of a {'/'.join(kv_types)} KV cache on {path.name} (once; cached)")
        doc = _run_kv_worker(path, kv_types, chunks, n_ctx, threads, timeout_s)
        if doc is None:
            return None
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(doc, indent=1) + "\n")
    what = f"{doc['chunks']} window{'s' if doc['chunks'] != 1 else ''} of {doc['n_ctx']} tokens"
    if not doc.get("extra_buffer_types", True):
        what += ", extra CPU buffer types off"
    control = float(doc["kld"]["f16"])
    return {k: Prior(max(float(doc["kld"][k]) - control, 0.0), f"measured: {k} KV cache on this model ({what})")
            for k in kv_types}


def _run_kv_worker(path: Path, kv_types: tuple[str, ...], chunks: int, n_ctx: int, threads: int | None,
                   timeout_s: float | None) -> dict[str, Any] | None:
    """Run the evaluations in a child Python, so that a llama.cpp crash cannot take the caller with it (the
    loader already avoids the extra CPU buffer types where they crash, see cpu_buffers)."""
    request = {"path": str(path), "kv_types": list(kv_types), "chunks": chunks, "n_ctx": n_ctx, "threads": threads}
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    try:
        done = subprocess.run([sys.executable, "-c", "from ggprec.kv_loss import _kv_worker; _kv_worker()"],
                              input=json.dumps(request), capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:  # refused (a one-line error) or crashed: the caller falls back to the prior
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _kv_worker() -> None:
    """Child process: evaluate the model against itself with each KV type; print one JSON line."""
    from .evaluate import evaluate
    from .probes import machine_buffers
    from .settings import RuntimeSettings

    req = json.loads(sys.stdin.read())
    base = RuntimeSettings(n_threads=req["threads"])
    kld, se = {}, {}
    try:
        for kv in ("f16", *req["kv_types"]):  # f16 with flash attention first: the control
            settings = base.with_overrides(cache_type_k=kv, cache_type_v=kv, flash_attn=True)
            r = evaluate(req["path"], req["path"], n_ctx=req["n_ctx"], chunks=req["chunks"], settings=settings)
            kld[kv], se[kv] = r.kld_mean, r.kld_mean_se
    except GgprecError as e:
        print(f"ggprec: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({"kld": kld, "kld_se": se, "chunks": req["chunks"], "n_ctx": req["n_ctx"],
                      "extra_buffer_types": machine_buffers().use_extra}))
