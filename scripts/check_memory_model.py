"""Predicted (ggprec.memory) vs llama.cpp-reported bytes, per case and per buffer.

Cases: the real SmolLM2-135M Q4_1 (loaded for real, mmap) and two variants quantized here with llama.cpp's
quantizer (q4_0, which the CPU backend repacks, and q8_0), at contexts 512/4096/32768 and KV types
f16/q8_0/q4_0; synthetic llama-3.2-1b / llama-3-8b / llama-3-70b shapes written sparsely, measured with
llama.cpp's no_alloc simulation; the mixture-of-experts shapes (tiny-moe, qwen3-30b-a3b, gpt-oss-20b,
mixtral-8x7b, deepseek-v2-lite with MLA) written sparsely in bf16, with and without per-tensor placement
(`-ot` patterns, `--cpu-moe`; on a CPU-only build every override names the CPU, so the buffers must not
move; GPU placement is checked when a GPU is lent). llama.cpp logs MiB with two decimals, so each
reported buffer is known to +-0.005 MiB (5243 bytes); a buffer passes when |predicted - reported| <= 2% of
reported + that bound.

Quantized cases: tiny dense and tiny-moe shapes quantized by llama.cpp to q4_0, q4_k, iq4_nl, q2_k and
q8_0, loaded with extra CPU buffers on (this machine's repack/AMX rules) and off (--no-repack), so every
buffer rule is checked against a real allocation on whatever machine runs this.

Run: python scripts/check_memory_model.py [--quick] [--moe-only] [--quantized-only]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

from ggprec.alloc import measure_allocation
from ggprec.cpu_buffers import from_flags, host_buffers
from ggprec.gguf_info import read_gguf
from ggprec.memory import predict
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.synth import PRESETS, write_synth

LOG_ROUNDING = 5243  # half of 0.01 MiB
TARGET = 0.02
MIB = 1 << 20


def quantize(src: Path, out: Path, type_name: str) -> Path:
    import llama_cpp

    from ggprec.ggml_types import lookup

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = lookup(type_name).ftype
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"quantizing {src} to {type_name} failed")
    return out


def compare(label: str, path: Path, settings: RuntimeSettings, no_alloc: bool, rows: list[tuple],
            source: Path | None = None, tensor_types: dict | None = None, extra_buffers: bool = True) -> None:
    """Predict from `source` + `tensor_types` (what recommend does) or from `path` itself. extra_buffers
    False: loaded and predicted like llama.cpp's --no-repack."""
    info = read_gguf(source or path)
    host = None if extra_buffers else from_flags(set(), use_extra=False)
    pred = predict(info, settings, tensor_types, mmap=not no_alloc, host=host)
    rep = measure_allocation(path, settings, no_alloc=no_alloc, extra_buffers=None if extra_buffers else False).buffers
    pb = dict(pred.buffers)
    if "model:total" in rep:  # no_alloc with weights on several buffers: only the total is known
        pb = {k: v for k, v in pb.items() if not k.startswith("model:")} | {"model:total": pred.by_kind("model")}
    for key in sorted(set(pb) | set(rep)):
        p, r = pb.get(key, 0), rep.get(key, 0)
        ok = abs(p - r) <= TARGET * r + LOG_ROUNDING
        err = (p - r) / r if r else float("inf") if p else 0.0
        rows.append((label, key, p, r, err, ok))
        print(f"{label:<66} {key:<18} {p / MIB:>11.2f} {r / MIB:>11.2f} {100 * err:>+8.2f}%  {'ok' if ok else 'MISS'}")


def shipped_profile_cases(smol: Path, rows: list[tuple]) -> None:
    """Every shipped profile built from SmolLM2 (cached by build_variant), predicted from the plan's types
    on the source file, at ctx 4096 with the profile's own KV types."""
    from ggprec.plan import resolve_plan
    from ggprec.profile import shipped_profiles
    from ggprec.quantize import build_variant

    source = read_gguf(smol)
    for profile in shipped_profiles():
        variant = build_variant(smol, profile, threads=2)
        s = profile.runtime.with_overrides(n_ctx=4096, n_threads=2, n_gpu_layers=0)
        compare(f"SmolLM2 profile {profile.name} ctx 4096", variant, s, False, rows,
                source=smol, tensor_types=resolve_plan(source, profile).tensor_types())


QUANT_TYPES = ("q4_0", "q4_k", "iq4_nl", "q2_k", "q8_0")


def quantized_cases(tmp: Path, rows: list[tuple]) -> None:
    """The types llama.cpp's CPU backend may repack (q4_0, q4_k, iq4_nl; q2_k with AVX-512) and one it does
    not here (q8_0; AMX takes it), on a dense and a mixture-of-experts shape (expert weights are 3-D and
    feed MUL_MAT_ID), loaded for real with mmap, with extra buffers on (this machine's rules) and off."""
    for preset in ("tiny", "tiny-moe"):
        src = write_synth(tmp / f"{preset}-f16.gguf", PRESETS[preset], dtype="f16")
        for qtype in QUANT_TYPES:
            path = quantize(src, tmp / f"{preset}-{qtype}.gguf", qtype)
            for extra in (True, False):
                s = RuntimeSettings(n_ctx=512, n_threads=2)
                compare(f"{preset} {qtype} ctx 512 extra buffers {'on' if extra else 'off'}", path, s, False,
                        rows, extra_buffers=extra)


MOE_PRESETS = ("tiny-moe", "qwen3-30b-a3b", "gpt-oss-20b", "mixtral-8x7b", "deepseek-v2-lite")
# (label, settings changes): placement cases; every device is the CPU here (see the module doc).
PLACEMENTS: tuple[tuple[str, dict], ...] = (
    ("", {}),
    (" --cpu-moe", {"n_cpu_moe": ALL_LAYERS}),
    (" -ot attn=CPU --n-cpu-moe 2", {"override_tensor": (("attn", "CPU"),), "n_cpu_moe": 2}),
)


def moe_cases(tmp: Path, ctxs: tuple[int, ...], rows: list[tuple]) -> None:
    for preset in MOE_PRESETS:
        path = write_synth(Path(tmp) / f"{preset}.gguf", PRESETS[preset], dtype="bf16", sparse=True)
        for ctx in ctxs:
            for kv in ("f16", "q8_0"):
                for label, changes in PLACEMENTS if ctx == ctxs[-1] and kv == "f16" else PLACEMENTS[:1]:
                    s = RuntimeSettings(n_ctx=ctx, n_threads=2, cache_type_k=kv, cache_type_v=kv, **changes)
                    compare(f"{preset} (sparse bf16) ctx {ctx} kv {kv}{label} no_alloc", path, s, True, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (contexts 512 and 4096 only)")
    ap.add_argument("--moe-only", action="store_true", help="only the mixture-of-experts shapes")
    ap.add_argument("--quantized-only", action="store_true", help="only the quantized dense and MoE cases")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"this machine: {host_buffers().describe()}")
    ctxs = (512, 4096) if args.quick else (512, 4096, 32768)
    kvs = ("f16", "q8_0", "q4_0")
    rows: list[tuple] = []
    print(f"{'case':<66} {'buffer':<18} {'pred MiB':>11} {'llama MiB':>11} {'error':>9}")
    with tempfile.TemporaryDirectory(prefix="ggprec-memcheck-") as tmp:
        quantized_cases(Path(tmp), rows)
        if args.quantized_only:
            return report(rows, t0)
        moe_cases(Path(tmp), ctxs[1:], rows)
        if args.moe_only:
            return report(rows, t0)
        from ggprec.demo_model import demo_model_path

        smol = demo_model_path(quiet=True)
        variants = {"Q4_1 (as shipped)": smol,
                    "q4_0": quantize(smol, Path(tmp) / "smol-q4_0.gguf", "q4_0"),
                    "q8_0": quantize(smol, Path(tmp) / "smol-q8_0.gguf", "q8_0")}
        shipped_profile_cases(smol, rows)
        for vname, path in variants.items():
            for ctx in ctxs:
                for kv in kvs:
                    s = RuntimeSettings(n_ctx=ctx, n_threads=2, cache_type_k=kv, cache_type_v=kv)
                    compare(f"SmolLM2 {vname} ctx {ctx} kv {kv}", path, s, False, rows)
        for preset in ("llama-3.2-1b", "llama-3-8b", "llama-3-70b"):
            path = write_synth(Path(tmp) / f"{preset}.gguf", PRESETS[preset], dtype="f16", sparse=True)
            for ctx in ctxs:
                for kv in kvs:
                    s = RuntimeSettings(n_ctx=ctx, n_threads=2, cache_type_k=kv, cache_type_v=kv)
                    compare(f"{preset} (sparse f16) ctx {ctx} kv {kv} no_alloc", path, s, True, rows)
    return report(rows, t0)


def report(rows: list[tuple], t0: float) -> int:
    misses = [r for r in rows if not r[5]]
    print(f"\n{len(rows) - len(misses)}/{len(rows)} buffers within {TARGET:.0%} (+ log rounding {LOG_ROUNDING} B)")
    for label, key, p, r, err, _ in misses:
        print(f"  MISS {label} {key}: predicted {p / MIB:.2f} MiB, llama.cpp {r / MIB:.2f} MiB ({100 * err:+.2f}%)")
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
