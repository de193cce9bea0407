"""`ggprec recommend --verify` on the two real models ggprec reaches, CPU only (issue 17): predicted beside
measured KLD and their ratio, for a budget that keeps the model as it is and two that force smaller types.

    python scripts/verify_recommend.py [--models smollm2-135m,gemma3-270m] [--chunks 4] [--flags "..."]
                                       [-o runs.json]

Each run is exactly the command a user types (printed above the table), with --json --no-store added:
`ggprec recommend MODEL --vram 0 --ctx 2048 --verify --ram R [FLAGS]`: the model as it is (--ram 2), a RAM
budget it does not fit as it is at the default goal, a tighter one with --goal speed, and a stated loss
(--max-kld 0.1). The budgets include recommend's default margin of 512 MiB; at ctx 2048 memory.predict puts
the model as it is at 0.73 GiB (SmolLM2-135M Q4_1; 0.70 with a q4_0 KV cache) and 1.27 GiB (Gemma 3 270M
Q4_K_M; 1.25 with a q8_0 cache), and the smallest plan at 0.675 and 1.24 GiB: so 0.705/0.70 and 1.26/1.25
change weights (the script fails a forcing row that keeps them). Predicted KLD: the error proxy fitted on the
model (the first run fits it: about a minute; later runs read the fit from the history), plus the KV cache's
loss measured on the model. Measured KLD is against the source file itself (what --verify measures; the
model as it is measures 0 by definition). Slow: one quantize + one evaluation per run (minutes on 2 cores)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

# (RAM GiB, extra flags) per model: the model as it is at the default goal; a budget it does not fit at the
# default goal; a tighter one with --goal speed; a stated loss.
RUNS: dict[str, list[tuple[float, list[str]]]] = {
    "smollm2-135m": [(2.0, []), (0.705, []), (0.70, ["--goal", "speed"]), (2.0, ["--max-kld", "0.1"])],
    "gemma3-270m": [(2.0, []), (1.26, []), (1.25, ["--goal", "speed"]), (2.0, ["--max-kld", "0.1"])],
}
FORCING = 2  # the runs after the first that must change weights


def model_path(name: str) -> Path:
    from ggprec import demo_model

    return demo_model.real_model_path(name, quiet=True)


def run(model: Path, ram: float, extra: list[str], chunks: int, flags: list[str]) -> tuple[str, dict[str, Any]]:
    cmd = [sys.executable, "-m", "ggprec", "recommend", str(model), "--vram", "0", "--ram", f"{ram:g}", "--ctx",
           "2048", *extra, *flags, "--verify", "--chunks", str(chunks)]
    shown = shlex.join(["ggprec", *cmd[3:]])
    out = subprocess.run([*cmd, "--json", "--no-store"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{shown}: exit {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return shown, json.loads(out.stdout)


def row(name: str, ram: float, extra: list[str], doc: dict[str, Any]) -> dict[str, Any]:
    chosen = next(r for r in doc["front"] if r["chosen"])
    v = doc["verified"]
    return {"model": name, "ram_gib": ram, "goal": doc["goal"], "as_is": doc["as_is"],
            "bits_per_weight": chosen["bits_per_weight"], "kv": chosen["kv_type"],
            "predicted_kld": v["predicted_kld"], "measured_kld": v["measured_kld"], "ratio": v["ratio"],
            "loss_source": chosen["loss_source"], "tg_tps": chosen["tg_tps"], "rule": doc["rule"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(RUNS), help="comma-separated: " + ", ".join(RUNS))
    ap.add_argument("--chunks", type=int, default=4, help="evaluation windows per --verify (recommend's default)")
    ap.add_argument("--flags", default="", help='added to every run, e.g. "--imatrix auto"')
    ap.add_argument("-o", "--output", type=Path, help="also write the rows and the full documents as JSON")
    args = ap.parse_args()
    rows, docs = [], []
    for name in args.models.split(","):
        path = model_path(name)
        for ram, extra in RUNS[name]:
            shown, doc = run(path, ram, extra, args.chunks, shlex.split(args.flags))
            print(shown, file=sys.stderr, flush=True)
            rows.append(row(name, ram, extra, doc))
            forcing = (ram, extra) in RUNS[name][1:1 + FORCING]
            if forcing and doc["as_is"]:
                raise SystemExit(f"{shown}: kept the model as it is; this budget no longer forces smaller types")
            rows[-1]["goal"] = " ".join([*extra, args.flags]).strip() or doc["goal"]
            docs.append(doc)
    print("| model | RAM GiB | goal/flags | plan | bits/weight | KV | predicted KLD | measured KLD | "
          "measured/predicted | loss source |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        plan = "as is" if r["as_is"] else "requantized"
        print(f"| {r['model']} | {r['ram_gib']:g} | {r['goal']} | {plan} | {r['bits_per_weight']:.2f} | {r['kv']} | "
              f"{r['predicted_kld']:.4f} | {r['measured_kld']:.4f} | {ratio} | {r['loss_source']} |")
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "documents": docs}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
