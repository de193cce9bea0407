"""The compute buffer across contexts: llama.cpp's no_alloc report beside `memory.predict`, one synthetic shape.

check_memory_model.py checks three contexts; ggml's allocator places the big tensors differently as the
masks grow, so a rule fitted there can miss between them. This sweeps n_ctx for one preset (sparse bf16, any
dimension overridden) at the given cache types and n_ubatch, flash attention on unless --no-fa, and prints
each compute:CPU buffer as llama.cpp reports it, the prediction, the error and the prediction's reason.

    python scripts/sweep_compute.py gpt-oss-20b
    python scripts/sweep_compute.py gpt-oss-20b --set n_embd=2048 --set n_ff_exp=2048 --set n_layer=4 --kv q8_0
    python scripts/sweep_compute.py qwen3-30b-a3b --ctx 1024,4096,8192 --ubatch 256
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ggprec.alloc import measure_allocation
from ggprec.gguf_info import read_gguf
from ggprec.memory import predict
from ggprec.settings import RuntimeSettings
from ggprec.synth import shape_for, write_synth

MIB = 2**20
CONTEXTS = "512,1024,2048,2560,3072,4096,5120,6144,8192,10240,16384,32768"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help="A synth preset (ggprec synth --preset).")
    ap.add_argument("--set", action="append", default=[], metavar="DIM=N", help="Override a dimension.")
    ap.add_argument("--ctx", default=CONTEXTS, help=f"Contexts (default {CONTEXTS}).")
    ap.add_argument("--kv", default="f16,q8_0", help="KV cache types, one sweep each (default f16,q8_0).")
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--no-fa", action="store_true", help="Flash attention off.")
    a = ap.parse_args()
    over = {k: int(v) for k, v in (s.split("=", 1) for s in a.set)}
    with tempfile.TemporaryDirectory(prefix="ggprec-sweep-") as d:
        path = write_synth(Path(d) / "m.gguf", shape_for(a.preset, **over), dtype="bf16", sparse=True)
        info = read_gguf(path)
        print(f"{a.preset} {over or ''} n_embd {info.hparams.n_embd}, n_ubatch {a.ubatch}, "
              f"flash attention {'off' if a.no_fa else 'on'}; compute:CPU in MiB")
        worst = 0.0
        for kv in a.kv.split(","):
            for ctx in (int(c) for c in a.ctx.split(",")):
                s = RuntimeSettings(n_ctx=ctx, cache_type_k=kv, cache_type_v=kv, flash_attn=not a.no_fa,
                                    n_ubatch=a.ubatch, n_batch=max(a.ubatch, 512), n_threads=1)
                got = measure_allocation(path, s, no_alloc=True).buffers["compute:CPU"]
                pred = predict(info, s, mmap=False)
                err = (pred.buffers["compute:CPU"] - got) / got
                worst = max(worst, abs(err))
                predicted = pred.buffers["compute:CPU"]
                print(f"kv {kv:5} ctx {ctx:6}: llama.cpp {got / MIB:9.2f} predicted {predicted / MIB:9.2f} "
                      f"{err:+7.2%}  {pred.explain['compute:CPU']}", flush=True)
        print(f"largest error {worst:.2%}")


if __name__ == "__main__":
    main()
