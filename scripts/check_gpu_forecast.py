"""ggprec's forecast for a GPU known by its spec bandwidth, beside what llama.cpp measured on an H100.

The measurements are ../shared/measurements/h100-llama3-8b.md (llama-cpp-python 0.3.36 built with CUDA, one
H100 80GB HBM3, a Llama-3-8B shape, n_ctx 4096, flash attention, all layers offloaded; the KV rows with Q8_0
weights at n_ctx 32768, tg after a 16-token prefix and at depth 16384). The forecast is `ggprec plan`'s
(`ggprec.forecast`) for the same shape written sparsely here, with `--gpu-bandwidth 3000`. Nothing runs on a
GPU: this checks the memory model's CUDA buffers and the speed model's spec-bandwidth figures against the card.

Honest reading: the speed model's per-type efficiencies and fixed costs were fitted on these very tg figures
(ggprec/data/gpu_speed.json), so the tg rows check the model's arithmetic and its reading of the facts (bytes
per token from the shape, KV cells at each depth), not a prediction for an unseen card. The buffers are
independent predictions.

Run: python scripts/check_gpu_forecast.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ggprec.cpu_buffers import from_flags
from ggprec.forecast import forecast
from ggprec.gguf_info import read_gguf
from ggprec.plan import resolve_plan
from ggprec.profile import Profile, Rule, load_profile
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.speed import load_speed_model
from ggprec.synth import PRESETS, write_synth

TARGET = 0.15
MIB = 2**20
# The H100 table: profile -> (model:CUDA0 MiB, kv:CUDA0 MiB, compute:CUDA0 MiB, tg tok/s).
WEIGHTS = {"f16": (14315.02, 512.0, 258.5, 166.4), "q8_0": (7605.0, 512.0, 258.5, 224.7),
           "q4_0 (output q6_k)": (4156.0, 512.0, 258.5, 311.7)}
# KV rows (Q8_0 weights, n_ctx 32768): kv type -> (kv:CUDA0 MiB, tg short, tg at depth 16384).
KV = {"f16": (4096.0, 224.2, 177.2), "q8_0": (2176.0, 203.6, 143.8), "q4_0": (1152.0, 205.0, 144.3)}
DEPTH = 16384


def profile_for(name: str) -> Profile:
    if name.startswith("q4_0"):  # llama.cpp's Q4_0 mix keeps the output head at q6_k
        return Profile(name="q4_0-q6k-head", description="llama-quantize Q4_0", default="q4_0",
                       rules=(Rule(type="q6_k", roles=("output",)),))
    return load_profile(name)


def row(label: str, predicted: float, measured: float) -> bool:
    ratio = predicted / measured
    ok = abs(ratio - 1) <= TARGET
    print(f"{label:<46} {predicted:>10.1f} {measured:>10.1f} {ratio:>7.3f}  {'ok' if ok else 'MISS'}")
    return ok


def main() -> int:
    speed = load_speed_model(host_gbps=50.0, gpu_gbps=3000.0)
    host = from_flags(set())  # the H100 host's CPU repacking does not touch offloaded weights
    print(f"speed model: {speed.describe()}\n")
    print(f"{'figure':<46} {'ggprec':>10} {'H100':>10} {'ratio':>7}")
    results = []
    with tempfile.TemporaryDirectory(prefix="ggprec-gpu-") as tmp:
        path = write_synth(Path(tmp) / "llama-3-8b.gguf", PRESETS["llama-3-8b"], sparse=True)
        info = read_gguf(path)
        base = RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_ctx=4096, flash_attn=True)
        for name, (cuda0, kv, compute, tg) in WEIGHTS.items():
            plan = resolve_plan(info, profile_for(name))
            fc = forecast(plan, base, speed, host, depth=16)  # the H100 runs decoded after a 16-token prefix
            b = fc.memory.buffers
            results += [row(f"{name}: model:CUDA0 MiB", b["model:CUDA0"] / MIB, cuda0),
                        row(f"{name}: kv:CUDA0 MiB", b["kv:CUDA0"] / MIB, kv),
                        row(f"{name}: compute:CUDA0 MiB", b["compute:CUDA0"] / MIB, compute),
                        row(f"{name}: tg128 tok/s", fc.speed.tg_tps, tg)]
        plan = resolve_plan(info, load_profile("q8_0"))
        for kv_type, (kv_mib, tg_short, tg_deep) in KV.items():
            s = base.with_overrides(n_ctx=32768, cache_type_k=kv_type, cache_type_v=kv_type)
            short = forecast(plan, s, speed, host, depth=16)
            deep = forecast(plan, s, speed, host, depth=DEPTH)
            results += [row(f"KV {kv_type} ctx 32768: kv:CUDA0 MiB", short.memory.buffers["kv:CUDA0"] / MIB, kv_mib),
                        row(f"KV {kv_type} ctx 32768: tg128 short tok/s", short.speed.tg_tps, tg_short),
                        row(f"KV {kv_type} ctx 32768: tg128 at d{DEPTH} tok/s", deep.speed.tg_tps, tg_deep)]
    print(f"\n{sum(results)}/{len(results)} figures within {TARGET:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
