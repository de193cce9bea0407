"""Generation speed of `ggprec run` (ggprec.runner.run_benchmark) vs a bare llama-cpp-python decode loop.

Both use the same model, the same llama_context_params and the same token ids, in this one process,
interleaved rep by rep so that load from other processes hits both alike; ggprec's side is the timing
code `ggprec run` uses (ggprec.runner.Decoder and time_tg: two stores into a batch prepared once, then
llama_decode, per token). The bare loop is what a
llama-cpp-python user would write: `llama_decode(ctx, llama_batch_get_one(token, 1))` per token.
Prints tok/s of each and the ratio ggprec / bare (target >= 0.98).

    python scripts/bench_run_overhead.py [MODEL] [--tg 64] [--rounds 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from ggprec.llama_backend import capture_log, context_params, load_model
from ggprec.runner import SEED, TG_PREFIX, Decoder, time_tg
from ggprec.settings import RuntimeSettings


class Bare:
    """The bare loop: raw llama-cpp-python calls only, its own model and context."""

    def __init__(self, model_path: str, settings: RuntimeSettings) -> None:
        import llama_cpp

        self.ll = llama_cpp
        with capture_log():  # keep llama.cpp quiet, as ggprec does
            mp = llama_cpp.llama_model_default_params()
            mp.n_gpu_layers = settings.n_gpu_layers
            self.model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp)
            self.ctx = llama_cpp.llama_init_from_model(self.model, context_params(settings))
        self.mem = llama_cpp.llama_get_memory(self.ctx)

    def tg(self, ids: list[int]) -> float:
        """tok/s of single-token decodes of ids[TG_PREFIX:] after ids[:TG_PREFIX]."""
        ll = self.ll
        prefix = (ll.llama_token * TG_PREFIX)(*ids[:TG_PREFIX])
        one = (ll.llama_token * 1)()
        ll.llama_memory_clear(self.mem, True)
        ll.llama_decode(self.ctx, ll.llama_batch_get_one(prefix, TG_PREFIX))
        t0 = time.perf_counter()
        for tok in ids[TG_PREFIX:]:
            one[0] = tok
            if ll.llama_decode(self.ctx, ll.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("llama_decode failed")
        ll.llama_synchronize(self.ctx)
        return (len(ids) - TG_PREFIX) / (time.perf_counter() - t0)

    def close(self) -> None:
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="GGUF file (default: the SmolLM2 demo model)")
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of one ggprec rep and one bare rep")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    if args.model is None:
        from ggprec.demo_model import demo_model_path

        args.model = str(demo_model_path(quiet=True))
    settings = RuntimeSettings(n_ctx=args.ctx, n_threads=args.threads)
    # ggprec's side is run_benchmark's own generation timing (Decoder + time_tg) on its own load
    lm = load_model(args.model, settings)
    dec = Decoder(lm)
    bare = Bare(args.model, settings)
    rng = random.Random(SEED)
    ids = [rng.randrange(lm.n_vocab) for _ in range(TG_PREFIX + args.tg)]
    ours: list[float] = []
    theirs: list[float] = []
    load = [os.getloadavg()[0]]
    try:
        time_tg(dec, ids[:TG_PREFIX], ids[TG_PREFIX:TG_PREFIX + 1])  # warm-ups
        bare.tg(ids[:TG_PREFIX + 1])
        for rnd in range(args.rounds):
            # rep by rep, alternating who goes first, so changes in machine load hit both alike
            for who in (("ggprec", "bare") if rnd % 2 == 0 else ("bare", "ggprec")):
                if who == "ggprec":
                    ours.append(args.tg / time_tg(dec, ids[:TG_PREFIX], ids[TG_PREFIX:]))
                else:
                    theirs.append(bare.tg(ids))
            load.append(os.getloadavg()[0])
    finally:
        dec.close()
        lm.close()
        bare.close()
    m_ours, m_bare = statistics.median(ours), statistics.median(theirs)
    print(f"model {args.model}")
    print(f"tg {args.tg} tokens, {args.rounds} interleaved rounds, threads {args.threads}, ctx {args.ctx}; "
          f"1-min load average {min(load):.2f}-{max(load):.2f} on {os.cpu_count()} CPUs")
    print(f"ggprec run  tg tok/s median {m_ours:8.2f}  best {max(ours):8.2f}  worst {min(ours):8.2f}")
    print(f"bare loop   tg tok/s median {m_bare:8.2f}  best {max(theirs):8.2f}  worst {min(theirs):8.2f}")
    paired = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))  # neighbours in time share the load
    print(f"ratio ggprec / bare: median {m_ours / m_bare:.3f}, best {max(ours) / max(theirs):.3f}, "
          f"median of paired rounds {paired:.3f}  (target >= 0.98)")


if __name__ == "__main__":
    main()
