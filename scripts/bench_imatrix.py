"""KLD with and without an importance matrix, and what collecting one costs, on the real models ggprec
reaches (SmolLM2-135M, Gemma 3 270M).

For each model: its f32 copy (llama.cpp's dequantization of the shipped file, ggprec profile f32) is the
reference and the source of every quantization. The importance matrix is collected on the f32 copy over
the shipped calibration text (`ggprec/data/calibration.txt`, 512-token chunks; timed, beside a plain decode
of the same chunks without the callback). Then each mix is quantized without and with the imatrix and
evaluated against the reference on the shipped evaluation text (a different text). A mix puts every block
weight in the named type (llama.cpp's fallbacks apply where a row is not a multiple of the type's block)
and keeps token_embd (also the tied output head) at q8_0: no imatrix has data for token_embd, and the
comparison is about the weights the imatrix covers.

    python scripts/bench_imatrix.py [--models smollm2-135m,gemma3-270m] [--types q4_k,iq4_nl,q3_k,iq3_s,iq2_xs]
                                    [--chunks 4] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ggprec.demo_model import cache_dir, real_model_path
from ggprec.errors import GgprecError
from ggprec.evaluate import evaluate
from ggprec.ggml_types import needs_imatrix
from ggprec.imatrix import calibration_text, chunk_tokens, collect_imatrix
from ggprec.imatrix_file import write_imatrix
from ggprec.llama_backend import bos_token, load_model, tokenize
from ggprec.profile import Profile, Rule, load_profile
from ggprec.quantize import build_variant
from ggprec.settings import RuntimeSettings

N_CTX = 512


def plain_decode_seconds(model: Path, chunks: int, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds of loading the model and decoding the calibration chunks without the callback."""
    settings = RuntimeSettings(n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=threads)
    with Clock() as clock, load_model(model, settings) as loaded:  # load included, as collect_imatrix's
        work = chunk_tokens(tokenize(loaded.model, calibration_text(), add_bos=True), N_CTX, chunks,
                            bos_token(loaded.model))
        for chunk in work:
            loaded.decode_all(chunk)
    return clock.wall, clock.cpu


class Clock:
    """Wall and CPU seconds (all threads of this process) of a block: on a shared machine the CPU
    seconds say what the work costs, the wall seconds what the load made of it."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def mix(type_name: str, imatrix: Path | None) -> Profile:
    return Profile(name=f"{type_name}-mix{'-imatrix' if imatrix else ''}", default=type_name,
                   rules=(Rule(type="q8_0", match=r"token_embd\.weight"),),
                   imatrix=None if imatrix is None else str(imatrix))


def bench_model(name: str, types: list[str], chunks: int, threads: int) -> dict:
    src = real_model_path(name, quiet=True)
    ref = build_variant(src, load_profile("f32"), threads=threads)
    # Timed twice each, alternating, best of two: the machine is shared, and one slow pass says little.
    collect, plain = (float("inf"), float("inf")), (float("inf"), float("inf"))
    for _ in range(2):
        with Clock() as clock:
            imx = collect_imatrix(ref, threads=threads)
        collect = min(collect, (clock.wall, clock.cpu), key=lambda c: c[1])
        plain = min(plain, plain_decode_seconds(ref, imx.chunk_count, threads), key=lambda c: c[1])
    (cache_dir() / "imatrix").mkdir(parents=True, exist_ok=True)
    imx_path = write_imatrix(imx, cache_dir() / "imatrix" / f"bench-{name}.imatrix.gguf", force=True)
    out: dict = {"model": name, "source": src.name, "reference": ref.name, "imatrix_entries": len(imx.entries),
                 "imatrix_chunks": imx.chunk_count, "imatrix_tokens": imx.chunk_count * N_CTX,
                 "collect_wall_s": round(collect[0], 2), "collect_cpu_s": round(collect[1], 2),
                 "plain_wall_s": round(plain[0], 2), "plain_cpu_s": round(plain[1], 2), "rows": []}
    print(f"{name}: imatrix of {len(imx.entries)} weights over {imx.chunk_count} x {N_CTX} tokens: "
          f"{collect[1]:.1f} CPU s ({collect[0]:.1f} s wall) for load + decode + callback, best of 2; "
          f"{plain[1]:.1f} CPU s ({plain[0]:.1f} s wall) without the callback", flush=True)
    settings = RuntimeSettings(n_threads=threads)
    for t in types:
        row: dict = {"type": t}
        for label, path in (("plain", None), ("imatrix", imx_path)):
            if path is None and needs_imatrix(t):
                row[label] = None  # llama.cpp refuses it
                continue
            try:
                variant = build_variant(ref, mix(t, path), threads=threads)
            except GgprecError as e:
                row[label] = {"error": str(e)}
                continue
            r = evaluate(variant, ref, n_ctx=N_CTX, chunks=chunks, settings=settings)
            row[label] = {"kld": r.kld_mean, "kld_se": r.kld_mean_se, "top1": r.top1, "ppl": r.ppl,
                          "ppl_ref": r.ppl_ref, "size": variant.stat().st_size, "tokens": r.n_tokens}
        out["rows"].append(row)
        print(f"  {t}: {fmt(row.get('plain'))} -> {fmt(row.get('imatrix'))}", flush=True)
    return out


def fmt(cell: dict | None) -> str:
    if cell is None:
        return "refused without an imatrix"
    if "error" in cell:
        return f"error: {cell['error']}"
    return f"KLD {cell['kld']:.4f} ± {cell['kld_se']:.4f} ({cell['size'] / 2**20:.1f} MiB)"


def markdown(results: list[dict]) -> str:
    lines = ["| model | mix | size MiB | KLD without imatrix | KLD with imatrix | ratio |", "|---|---|---|---|---|---|"]
    for m in results:
        for row in m["rows"]:
            p, i = row.get("plain"), row.get("imatrix")
            size = (i or p or {}).get("size", 0) / 2**20
            cell_p = "refused" if p is None else f"{p['kld']:.4f} ± {p['kld_se']:.4f}" if "kld" in p else "error"
            cell_i = f"{i['kld']:.4f} ± {i['kld_se']:.4f}" if i and "kld" in i else "error"
            ratio = f"{i['kld'] / p['kld']:.2f}" if p and i and "kld" in p and "kld" in i else ""
            lines.append(f"| {m['model']} | {row['type']} | {size:.1f} | {cell_p} | {cell_i} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--types", default="q4_k,iq4_nl,q3_k,iq3_s,iq2_xs")
    ap.add_argument("--chunks", type=int, default=4, help="Evaluation windows of 512 tokens.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    types = [t for t in a.types.split(",") if t]  # --types "": the collection timing only
    results = [bench_model(m, types, a.chunks, a.threads) for m in a.models.split(",")]
    print()
    print(markdown(results))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
