"""Commands that measure speed and memory: run, calibrate, history."""

from __future__ import annotations

import sys
from typing import Any

import click

from .distributed import device_options, device_overrides
from .shell import LazyChoice, console, db_option, main, model_argument, print_json, runtime_options, runtime_overrides

# --- measuring: run, history (issue 4) ---------------------------------------------------------


def _kinds() -> tuple[str, ...]:
    from ..records import KINDS

    return KINDS

@main.command()
@model_argument
@click.option("--profile", "profile_name", help="A shipped profile name or a profile YAML file.")
@runtime_options
@device_options
@click.option("--pp", type=int, default=512, show_default=True, help="Prompt-processing tokens (one batch).")
@click.option("--tg", type=int, default=128, show_default=True, help="Generated tokens (single-token decodes).")
@click.option("--reps", type=int, default=3, show_default=True, help="Repetitions of each test.")
@click.option("-d", "--depth", type=click.IntRange(min=0), default=0, show_default=True,
              help="Time tg with this many tokens already in the KV cache (llama-bench's -d; 0: a short prefix).")
@click.option("--prompt", help="Also generate a greedy continuation of this text (untimed).")
@click.option("-n", "--n-predict", "n_predict", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens to generate with --prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def run(model: str, profile_name: str | None, rpc_servers: tuple[str, ...], tensor_split: str | None,
        device: str | None, split_mode: str | None, main_gpu: int | None, pp: int, tg: int, reps: int, depth: int,
        prompt: str | None, n_predict: int, as_json: bool, db: str | None, **options: Any) -> None:
    """Measure prompt and generation speed (tok/s) and allocated memory, like llama-bench; keep the result."""
    from ..hardware import fingerprint
    from ..history import save_run
    from ..printers import render_run, run_document
    from ..runner import run_with_profile
    from ..store import Store

    store = Store(db)  # opened first: a bad history path fails before minutes of measuring
    overrides = runtime_overrides(options)
    overrides.update(device_overrides(rpc_servers, tensor_split, device, split_mode, main_gpu, options.get("ngl")))
    progress = (lambda msg: click.echo(f"ggprec: {msg}", err=True)) if sys.stderr.isatty() else None
    from ..calibrate import speed_model_for
    from ..llama_backend import default_threads

    speed = speed_model_for(store=store, n_threads=options.get("n_threads") or default_threads())
    done = run_with_profile(model, profile_name, overrides, pp=pp, tg=tg, reps=reps, prompt=prompt,
                            progress=progress, n_predict=n_predict, speed_model=speed, depth=depth)
    for notice in done.result.notices:
        click.echo(f"ggprec: notice: {notice}", err=True)
    hardware = fingerprint()
    with store:
        record_id = save_run(store, done, hardware)
    if as_json:
        print_json(run_document(done, record_id, hardware))
    else:
        render_run(done, console(), record_id)


@main.command()
@click.option("--types", help="Comma-separated weight types to measure (default: "
              "f16,q8_0,q6_k,q5_k,q4_k,q5_0,q4_0,q3_k,q2_k; --quick: f16,q8_0,q4_k,q4_0).")
@click.option("--quick", is_flag=True, help="A smaller model, fewer tokens and types (~4x faster, noisier).")
@click.option("-t", "--threads", type=click.IntRange(1), help="CPU threads (default: as `ggprec run`).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
@db_option
def calibrate(types: str | None, quick: bool, threads: int | None, as_json: bool, db: str | None) -> None:
    """Measure decode and prompt speed per weight type on this machine with llama.cpp; keep it in the
    history for recommend, run and compare (expected tok/s)."""
    from .. import calibrate as cal_mod
    from .. import history
    from ..store import Store

    store = Store(db)  # opened first: a bad history path fails before a minute of measuring
    chosen = [t.strip() for t in types.split(",") if t.strip()] if types else (
        cal_mod.QUICK_TYPES if quick else cal_mod.DEFAULT_TYPES)
    progress = ((lambda stage, done, total: click.echo(f"ggprec: [{done + 1}/{total}] {stage}", err=True))
                if sys.stderr.isatty() else None)
    result = cal_mod.calibrate(chosen, quick=quick, threads=threads, progress=progress)
    with store:
        history.save_calibration(store, result)
    if as_json:
        print_json(result.to_dict(), schema=1)
    else:
        cal_mod.render(result, console())


@main.command()
@click.option("--model", help="Only rows of this model (path, file name or sha256 prefix).")
@click.option("--profile", help="Only rows of this profile (name or content-hash prefix).")
@click.option("--kind", type=LazyChoice(_kinds), help="Only this kind.")
@click.option("--limit", type=int, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def history(model: str | None, profile: str | None, kind: str | None, limit: int | None, as_json: bool,
            db: str | None) -> None:
    """List stored results, newest first."""
    from ..printers import history_document, history_table
    from ..store import Store

    with Store(db) as store:
        records = store.query(kind=kind, model=model, profile=profile, limit=limit)
        for line in store.skipped:  # rows that do not read back: one line each, never a traceback
            click.echo(f"ggprec: warning: {line}", err=True)
    if as_json:
        print_json(history_document(records))
    else:
        console().print(history_table(records))
