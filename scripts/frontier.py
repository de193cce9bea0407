"""Frontier: recommended mixes vs llama.cpp's fixed mixes on SmolLM2, file size vs measured mean KLD.

Usage: python scripts/frontier.py [--out docs] [--chunks 4] [--ctx 512] [--threads 2]

1. The reference: SmolLM2-135M-Instruct (the Q4_1 demo model) dequantized to F32 by llama.cpp.
2. llama.cpp's own mixes (q4_0, q4_k_m, q5_k_m, q6_k, q8_0) written by llama_model_quantize with its
   rules (pure off); what it actually wrote is read back (K-quants fall back on rows of 576).
3. Sensitivity of the reference: the newest stored `ggprec sensitivity` run, else one is measured
   (role x layer band at q4_0, plus the types llama.cpp's mixes use and the cheap alternatives to q4_0
   per role, so that recommend offers only measured types; the same as SENSITIVITY_COMMAND below).
   Both sides are evaluated on the same text and windows (evaluate's default text, --chunks windows of
   --ctx tokens); the table gives each mean KLD with its standard error over the scored tokens.
4. At each mix's file size, `recommend_for_size` (least expected KLD within that size, from the measured
   sensitivity) is quantized by ggprec and measured the same way.
Prints a Markdown table (also written to OUT/frontier.md) and draws OUT/frontier.png.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
from collections import Counter
from pathlib import Path

MIXES = {"q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q8_0": 7}  # llama_ftype
MIB = 2**20
ALSO = ("q5_1", "q8_0", "q5_0", "q4_1", "iq4_nl", "q4_k", "q5_k", "q6_k")  # K-quants: measured where rows allow
SENSITIVITY_COMMAND = ("ggprec sensitivity REF --groups role-layer --chunks 2 "
                       + " ".join(f"--also {t}" for t in ALSO) + " --also-groups role")


def llama_mix(source: Path, out: Path, ftype: int, threads: int) -> Path:
    """llama.cpp's own mix, as `llama-quantize SOURCE OUT TYPE` writes it."""
    import llama_cpp

    from ggprec.llama_backend import capture_log

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = ftype
    with capture_log():
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for ftype {ftype}")
    return out


def written_types(path: Path) -> str:
    from ggprec.gguf_info import read_gguf

    counts = Counter(t.type.name for t in read_gguf(path).tensors if len(t.shape) >= 2)
    return " ".join(f"{n}x{t}" for t, n in counts.most_common())


def measure_mixes(ref: Path, tmp: Path, cache: Path, args: argparse.Namespace, measure) -> dict[str, dict]:
    """llama.cpp's mixes of the reference: size, KLD, top-1 and the types written; cached in `cache` for the
    same reference, context and chunks."""
    key = {"reference": str(ref), "ctx": args.ctx, "chunks": args.chunks}
    if cache.is_file():
        doc = json.loads(cache.read_text())
        if doc.get("key") == key and all("kld_se" in m for m in doc["mixes"].values()):
            return doc["mixes"]
    mixes = {}
    for mix, ftype in MIXES.items():
        path = llama_mix(ref, tmp / f"{mix}.gguf", ftype, args.threads)
        kld, top1, se = measure(path)
        mixes[mix] = {"bytes": path.stat().st_size, "kld": kld, "kld_se": se, "top1": top1,
                      "types": written_types(path)}
        path.unlink()
        print(f"llama.cpp {mix}: {mixes[mix]['bytes'] / MIB:.1f} MiB, KLD {kld:.4f}, top-1 {top1:.1%}", flush=True)
    cache.write_text(json.dumps({"key": key, "mixes": mixes}, indent=1))
    return mixes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--priors", action="store_true",
                    help="Recommend from recommend's priors instead of the stored sensitivity (frontier-priors.*).")
    ap.add_argument("--allow-source-type", action="store_true",
                    help="Let recommend choose the type the F32 reference was dequantized from (q4_1 for the demo "
                         "model); it re-quantizes those tensors almost exactly, an advantage no real F16 model gives.")
    ap.add_argument("--exclude", action="append", default=[],
                    help="A further type recommend may not choose (repeatable), e.g. q4_k, whose 4-bit asymmetric "
                         "blocks nearly round-trip a dequantized q4_1 model.")
    ap.add_argument("--mixes-only", action="store_true",
                    help="Measure llama.cpp's mixes only (saved to OUT/frontier-mixes.json, reused by a full run).")
    args = ap.parse_args()
    import time

    t0 = time.perf_counter()

    from ggprec.demo_model import demo_model_path
    from ggprec.evaluate import evaluate
    from ggprec.gguf_info import read_gguf
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile
    from ggprec.quantize import build_variant, quantize
    from ggprec.recommend import recommend_for_size, stored_sensitivity
    from ggprec.sensitivity import measure_sensitivity
    from ggprec.settings import RuntimeSettings

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = demo_model_path(quiet=True)
    ref = build_variant(demo, load_profile("f32"), threads=args.threads)
    # The reference is the demo model's weights dequantized: its own block type round-trips them, so a
    # measured near-zero loss for it says nothing about quantizing a real model (see the README).
    held = Counter(t.type.name for t in read_gguf(demo).tensors if len(t.shape) >= 2 and t.type.quantized)
    exclude = tuple(args.exclude) if args.allow_source_type else (held.most_common(1)[0][0], *args.exclude)
    info = read_gguf(ref)
    settings = RuntimeSettings(n_threads=args.threads)

    def measure(path: Path) -> tuple[float, float, float]:
        r = evaluate(path, ref, n_ctx=args.ctx, chunks=args.chunks, settings=settings)
        return r.kld_mean, r.top1, r.kld_mean_se

    with tempfile.TemporaryDirectory(prefix="ggprec-frontier-", dir=ref.parent) as tmp:
        mixes = measure_mixes(ref, Path(tmp), out_dir / "frontier-mixes.json", args, measure)
        if args.mixes_only:
            return
        sens = None if args.priors else stored_sensitivity(str(ref))
        if sens is None and not args.priors:
            print(f"no stored sensitivity for the reference: measuring it ({SENSITIVITY_COMMAND})", flush=True)
            measure_sensitivity(ref, grouping="role-layer", chunks=2, n_ctx=args.ctx,
                                threads=args.threads, also=ALSO, also_grouping="role")
            sens = stored_sensitivity(str(ref))
        rows = []
        for mix, m in mixes.items():
            size = m["bytes"]
            sized = recommend_for_size(info, size, sens, name=f"rec-{mix}", exclude=exclude)
            plan = resolve_plan(info, sized.profile)
            rpath = quantize(ref, plan, Path(tmp) / f"rec-{mix}.gguf", threads=args.threads, force=True)
            rsize = rpath.stat().st_size
            rkld, rtop1, rse = measure(rpath)
            rtypes = written_types(rpath)
            rpath.unlink()
            kld = m["kld"]
            row = {"mix": mix, "mix_mib": size / MIB, "mix_kld": kld, "mix_se": m["kld_se"], "mix_top1": m["top1"],
                   "mix_types": m["types"], "rec_mib": rsize / MIB, "rec_kld": rkld, "rec_se": rse, "rec_top1": rtop1,
                   "rec_pred_kld": sized.expected_kld,
                   "rec_types": rtypes, "kld_change": rkld / kld - 1 if kld > 0 else float("nan")}
            rows.append(row)
            print(f"{mix}: {size / MIB:.1f} MiB KLD {kld:.4f}±{m['kld_se']:.4f} | recommended {rsize / MIB:.1f} MiB "
                  f"KLD {rkld:.4f}±{rse:.4f} "
                  f"(predicted {sized.expected_kld:.4f}) {row['kld_change']:+.0%}", flush=True)

    source = "priors" if sens is None else f"sensitivity #{sens.get('id')} ({sens.get('grouping')}, probes " \
        f"{'+'.join([sens['probe_type'], *sens.get('also', [])])})"
    excluded = f", {exclude[0]} excluded (the reference was dequantized from it)" if exclude else ""
    if len(exclude) > 1:
        excluded += f", {', '.join(exclude[1:])} excluded (--exclude)"
    md = [f"SmolLM2-135M-Instruct, F32 reference, {args.chunks} windows of {args.ctx} tokens, {args.threads} threads; "
          f"recommended from {source}{excluded}; sensitivity measured by `{SENSITIVITY_COMMAND}`.", "",
          "KLD: mean ± standard error over the scored tokens (both sides scored on the same tokens).", "",
          "| llama.cpp mix | MiB | KLD | top-1 | recommended MiB | KLD | top-1 | predicted KLD | measured/predicted "
          "| KLD vs mix |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['mix']} | {r['mix_mib']:.1f} | {r['mix_kld']:.4f} ± {r['mix_se']:.4f} | {r['mix_top1']:.1%} | "
                  f"{r['rec_mib']:.1f} | {r['rec_kld']:.4f} ± {r['rec_se']:.4f} | {r['rec_top1']:.1%} | "
                  f"{r['rec_pred_kld']:.4f} | "
                  f"{r['rec_kld'] / r['rec_pred_kld'] if r['rec_pred_kld'] > 0 else float('nan'):.2f} | "
                  f"{r['kld_change']:+.0%} |")
    md.append("")
    md.append("Tensor types written (2-D tensors):")
    md.append("")
    for r in rows:
        md.append(f"- {r['mix']}: llama.cpp `{r['mix_types']}`; recommended `{r['rec_types']}`")
    text = "\n".join(md) + "\n"
    stem = "frontier-priors" if args.priors else "frontier-source-type" if args.allow_source_type else \
        "frontier-strict" if args.exclude else "frontier"
    (out_dir / f"{stem}.md").write_text(text)
    print(text)
    short = "priors" if sens is None else f"sensitivity #{sens.get('id')}"
    plot(rows, out_dir / f"{stem}.png", short + (f", {' and '.join(exclude)} not chosen" if exclude else ""))
    print(f"frontier: {time.perf_counter() - t0:.0f} s wall", flush=True)


def plot(rows: list[dict], path: Path, source: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar([r["mix_mib"] for r in rows], [r["mix_kld"] for r in rows], yerr=[r["mix_se"] for r in rows],
                fmt="o-", capsize=3, label="llama.cpp mixes (± s.e.)")
    ax.errorbar([r["rec_mib"] for r in rows], [r["rec_kld"] for r in rows], yerr=[r["rec_se"] for r in rows],
                fmt="s-", capsize=3, label="ggprec recommend, measured (± s.e.)")
    for r in rows:
        ax.annotate(r["mix"], (r["mix_mib"], r["mix_kld"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KLD vs F32 reference")
    ax.set_title(f"SmolLM2-135M: file size vs KLD\nrecommended from {source}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
