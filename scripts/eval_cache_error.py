"""How exact is the reference cache of `ggprec eval`? Compares, per scored position, the float64
full-precision KL(ref || cand) with the KLD computed from the cache's uint16 log-probabilities, and prints
the disk the cache takes.

    python scripts/eval_cache_error.py CANDIDATE REFERENCE [--chunks 4] [--ctx 512] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np

from ggprec import evaluate as ev
from ggprec.settings import RuntimeSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("candidate")
    ap.add_argument("reference")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    settings = RuntimeSettings(n_ctx=a.ctx, n_threads=a.threads)
    ref_llm = ev.load_for_windows(a.reference, settings, a.ctx)
    cand_llm = ev.load_for_windows(a.candidate, settings, a.ctx)
    tokens, bos = ev.model_tokens(ref_llm, ev.default_text())
    windows = ev.make_windows(tokens, a.ctx, a.chunks, bos)
    exact, cached = [], []
    for i in range(windows.n_chunks):
        p, _ = ev.window_logp(ref_llm, windows, i)
        q, _ = ev.window_logp(cand_llm, windows, i)
        exact.append(ev.kl_divergence(p, q))
        codes, lo = ev.quantize_logp(p)
        cached.append(ev.kl_divergence_quantized(codes, lo, q))
    exact_kld, cached_kld = np.concatenate(exact), np.concatenate(cached)
    n, n_vocab = exact_kld.size, ref_llm.n_vocab
    err = np.abs(cached_kld - exact_kld)
    print(f"{n} scored positions ({windows.n_chunks} x {windows.scored_per_window}), n_vocab {n_vocab}")
    for name, kld in (("float64 exact", exact_kld), ("uint16 cache", cached_kld)):
        print(f"{name:>13}: KLD mean {kld.mean():.7f} median {np.median(kld):.7f} "
              f"p99 {np.percentile(kld, 99):.7f} max {kld.max():.7f}")
    print(f"mean KLD error {cached_kld.mean() - exact_kld.mean():+.2e} "
          f"({(cached_kld.mean() - exact_kld.mean()) / exact_kld.mean():+.3%}); "
          f"per position: median |error| {np.median(err):.2e}, max |error| {err.max():.2e}")
    print(f"cache: {n * (n_vocab * 2 + 4 + 4 + 8) / 2**20:.1f} MiB "
          f"(float32 log-probs would take {n * n_vocab * 4 / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
