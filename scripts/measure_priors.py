"""Measure the loss facts ggprec.priors rests on, on the real models ggprec can reach, and write them into
ggprec/data/loss_priors.json (the `measured` section; the published facts there are kept as they are).

For each model: its f32 reference (`build_variant` with profile f32: the shipped quantized file dequantized,
so the reference is itself a quantized model), llama.cpp's standard whole-model mixes written by llama.cpp's
own quantizer from that reference (`llama_model_quantize` with the mix's llama_ftype, as `llama-quantize
ref.gguf out.gguf Q4_K_M` does), and the reference with a quantized KV cache (flash attention on). Each
variant's KLD against the reference comes from `ggprec.evaluate.evaluate` (windows of --ctx tokens of the
shipped text; mean and standard error over the scored tokens).

Each point records what the file really holds: bits per weight of the whole file, the share of block
parameters that llama.cpp's shape fallback moved off the mix's K-quant (rows of 576 or 640 are not
multiples of 256, so on these models Q4_K_M is mostly q5_0 and Q2_K mostly q4_0), and the share of
parameters written in the very type the shipped file had (re-quantizing to the source's own type is
nearly lossless, so those points understate the loss). ggprec.priors fits only unflagged points.

    PYTHONPATH=. python scripts/measure_priors.py            # both models, ~10-20 min on 2 busy cores
    PYTHONPATH=. python scripts/measure_priors.py --models smollm2-135m --chunks 2

On CPUs with AMX, llama.cpp 0.3.36 (llama-cpp-python 0.3.36) crashes in ggml_backend_amx_mul_mat on
every quantized Gemma 3 270M file; the extra CPU buffer types (AMX, repack) are therefore switched off
for every load in this script (`llama_model_params.use_extra_bufts = false`), for both models alike.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ggprec.demo_model import REAL_MODELS, cache_dir, real_model_path  # noqa: E402
from ggprec.errors import GgprecError  # noqa: E402
from ggprec.evaluate import evaluate  # noqa: E402
from ggprec.fileio import atomic_output, atomic_write_text  # noqa: E402
from ggprec.gguf_info import ModelInfo, read_gguf  # noqa: E402
from ggprec.hashing import model_sha256  # noqa: E402
from ggprec.probes import machine_buffers as host_buffers  # noqa: E402
from ggprec.profile import load_profile  # noqa: E402
from ggprec.quantize import build_variant  # noqa: E402
from ggprec.settings import RuntimeSettings  # noqa: E402

DATA = REPO / "ggprec" / "data" / "loss_priors.json"
# llama.cpp's standard mixes, by the name llama-quantize takes, and the type each is named after.
MIXES: dict[str, str] = {"q8_0": "q8_0", "q6_k": "q6_k", "q5_k_m": "q5_k", "q4_k_m": "q4_k", "q4_0": "q4_0",
                         "q3_k_m": "q3_k", "q2_k": "q2_k"}
KV_TYPES = ("q8_0", "q4_0")
BIAS_SHARE = 0.5  # a point is flagged when at least this share of parameters keeps the source's own type


def quantize_mix(reference: Path, mix: str, threads: int) -> Path:
    """`reference` written as llama.cpp's standard mix `mix` by llama.cpp's quantizer, cached by sha256."""
    import llama_cpp

    from ggprec.llama_backend import LogCapture, capture_log

    out = cache_dir() / "variants" / f"{reference.stem}.mix-{mix}.{model_sha256(reference)[:16]}.gguf"
    if out.is_file():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    log = LogCapture()
    with atomic_output(out, force=True, source=reference) as tmp, capture_log(log):
        rc = llama_cpp.llama_model_quantize(str(reference).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise GgprecError(f"llama.cpp could not write {mix} of {reference}: code {rc}")
    return out


def composition(info: ModelInfo, source: ModelInfo, nominal: str) -> dict:
    """What a written mix holds: bits per weight over the whole file, parameters per written type, the share
    of block parameters the shape fallback moved off a K-quant mix, and the share of parameters (2-D
    tensors) that keep the source file's own type."""
    src_type = {t.name: t.type.name for t in source.tensors}
    params = sum(t.n_elements for t in info.tensors)
    by_type: Counter[str] = Counter()
    blocks = legacy = same = same_blocks = matrices = 0
    for t in info.tensors:
        by_type[t.type.name] += t.n_elements
        if len(t.shape) < 2 or t.shape[1] == 1:
            continue
        kept = src_type.get(t.name) == t.type.name
        matrices += t.n_elements
        same += t.n_elements if kept else 0
        if t.layer is not None:
            blocks += t.n_elements
            same_blocks += t.n_elements if kept else 0
            legacy += t.n_elements if "_k" not in t.type.name else 0
    return {
        "file_bpw": round(sum(t.n_bytes for t in info.tensors) * 8 / params, 3),
        "params_by_type": dict(by_type.most_common()),
        "fallback_share": round(legacy / blocks, 3) if "_k" in nominal and blocks else 0.0,
        "source_type_share": round(same / matrices, 3) if matrices else 0.0,
        "source_type_share_blocks": round(same_blocks / blocks, 3) if blocks else 0.0,
    }


def eval_point(candidate: Path, reference: Path, settings: RuntimeSettings, chunks: int, n_ctx: int) -> dict:
    r = evaluate(candidate, reference, n_ctx=n_ctx, chunks=chunks, settings=settings)
    return {"kld": r.kld_mean, "kld_se": r.kld_mean_se, "top1": r.top1, "ppl_ratio": r.ppl_ratio,
            "n_tokens": r.n_tokens}


def measure_model(name: str, chunks: int, n_ctx: int, threads: int) -> dict:
    model = REAL_MODELS[name]
    source_path = real_model_path(name, quiet=True)
    source = read_gguf(source_path)
    reference = build_variant(source_path, load_profile("f32"), threads=threads)
    base = RuntimeSettings(n_threads=threads)
    source_types = Counter()
    for t in source.tensors:
        source_types[t.type.name] += t.n_elements
    out: dict = {
        "model": name, "title": model.title,
        "n_params": sum(t.n_elements for t in source.tensors),
        "arch": source.arch,
        "source_file": model.filename, "source_types": dict(source_types.most_common()),
        "reference": f"{model.filename} dequantized to f32 by llama.cpp (ggprec profile f32)",
        "weights": {}, "kv": {},
    }
    for mix, nominal in MIXES.items():
        t0 = time.time()
        path = quantize_mix(reference, mix, threads)
        point = composition(read_gguf(path), source, nominal)
        point.update(eval_point(path, reference, base, chunks, n_ctx))
        point["excluded"] = exclusion(point, nominal)
        out["weights"][mix] = point
        print(f"{name} {mix:7s} bpw {point['file_bpw']:5.2f} KLD {point['kld']:.5f} ± {point['kld_se']:.5f} "
              f"top1 {point['top1']:.3f} fallback {point['fallback_share']:.2f} "
              f"source-type {point['source_type_share']:.2f} ({time.time() - t0:.0f} s)", flush=True)
    for kv in ("f16", *KV_TYPES):  # f16 with flash attention: the control (what flash attention alone changes)
        settings = base.with_overrides(cache_type_k=kv, cache_type_v=kv, flash_attn=True)
        point = eval_point(reference, reference, settings, chunks, n_ctx)
        out["kv"][kv] = point
        print(f"{name} KV {kv:5s} KLD {point['kld']:.5f} ± {point['kld_se']:.5f} top1 {point['top1']:.3f}",
              flush=True)
    return out


def exclusion(point: dict, nominal: str) -> str | None:
    """Why a point must not be used to fit the size dependence, or None. Weights kept in the source's own type
    lose (almost) nothing; at 6 bits and more the head's loss is a large part of the whole, so every weight
    counts, while below that the blocks' loss dominates and a head copied exactly changes little (the tied
    head of both models is q8_0 in the source and in every mix below q8_0, by llama.cpp's output rule)."""
    from ggprec.ggml_types import lookup

    key = "source_type_share" if lookup(nominal).bits_per_weight >= 6 else "source_type_share_blocks"
    if point[key] >= BIAS_SHARE:
        where = "weights" if key == "source_type_share" else "block weights"
        return (f"{point[key]:.0%} of the {where} keep the source file's own type "
                f"(re-quantizing to it is nearly lossless): understates the loss")
    if point["fallback_share"] >= BIAS_SHARE:
        return (f"{point['fallback_share']:.0%} of the block weights fell back to a legacy type (rows not a "
                f"multiple of 256): not the mix the published table measured")
    return None


def markdown_table(doc: dict) -> str:
    """The facts of the data file as one Markdown table (the README's), with the fitted exponents."""
    from ggprec import priors

    anchor = doc["published"]["llama-3-8b"]
    measured = doc.get("measured", {})
    names = list(measured)
    head = ["mix", "Llama-3-8B (published, less floor)"] + [measured[n]["title"] for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mix in MIXES:
        row = [mix, f"{priors.anchor_kld(mix):.4f}"]
        for n in names:
            p = measured[n]["weights"].get(mix)
            cell = f"{p['kld']:.4f} ± {p['kld_se']:.4f} ({p['file_bpw']:.2f} bpw)" if p else "-"
            row.append(cell + (" *excluded*" if p and p["excluded"] else ""))
        lines.append("| " + " | ".join(row) + " |")
    kv8 = anchor["kv"]["q8_0"]["kld"] - anchor["kv_floor"]["kld"]
    for kv in KV_TYPES:
        row = [f"KV cache {kv}", f"{kv8:.4f} (PR #7412)" if kv == "q8_0" else "-"]
        for n in names:
            p = measured[n]["kv"].get(kv)
            row.append(f"{p['kld']:.4f} ± {p['kld_se']:.4f}" if p else "-")
        lines.append("| " + " | ".join(row) + " |")
    fit, kv = priors.size_fit(), priors.kv_facts()
    lines.append("")
    lines.append(f"Size exponent b = {fit.b:.3f} over {len(fit.points)} points (rms log residual "
                 f"{fit.rms_log_residual:.2f}); KV priors (any size): "
                 + ", ".join(f"{k} {v:.5f}" for k, v in sorted(kv.items())) + ".")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="store_true", help="print the data file's facts as Markdown; measure nothing")
    ap.add_argument("--models", nargs="+", default=list(REAL_MODELS), choices=list(REAL_MODELS))
    ap.add_argument("--chunks", type=int, default=4, help="windows of --ctx tokens per evaluation")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.table:
        print(markdown_table(doc))
        return 0
    started = time.time()
    measured = {name: measure_model(name, args.chunks, args.ctx, args.threads) for name in args.models}
    import llama_cpp

    doc.setdefault("measured", {})
    for name, facts in measured.items():
        facts["method"] = {
            "command": "PYTHONPATH=. python scripts/measure_priors.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "llama_cpp_python": llama_cpp.__version__, "chunks": args.chunks, "n_ctx": args.ctx,
            "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "extra_buffer_types": "on" if host_buffers().use_extra else f"off ({host_buffers().note})",
            "kv_reference": "the f32 reference with an f16 KV cache, flash attention off (evaluate's reference)",
        }
        doc["measured"][name] = facts
    atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
