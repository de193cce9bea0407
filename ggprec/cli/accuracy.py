"""Commands that measure accuracy: eval, compare, demo."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from .distributed import device_options, device_overrides
from .shell import console, db_option, main, model_argument, print_json

# --- accuracy: eval, compare, demo (issue 5) ---------------------------------------------------


@main.command("eval")
@model_argument
@click.option("--reference", required=True, type=click.Path(path_type=str),
              help="The reference model (e.g. an f32 or f16 build of the same weights).")
@click.option("--text", "text_file", type=click.Path(path_type=str),
              help="UTF-8 text to evaluate on (default: the English text shipped with ggprec).")
@click.option("--ctx", "n_ctx", type=int, default=512, show_default=True,
              help="Window size in tokens; the second half of each window is scored.")
@click.option("--chunks", type=int, help="Number of windows (default: all the text gives).")
@click.option("-t", "--threads", "n_threads", type=int, help="CPU threads (default: all logical CPUs).")
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int,
              help="Layers of MODEL to offload (-1: all; default: all with --rpc/--device, else none).")
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def eval_cmd(model: str, reference: str, text_file: str | None, n_ctx: int, chunks: int | None,
             n_threads: int | None, ngl: int | None, rpc_servers: tuple[str, ...], tensor_split: str | None,
             device: str | None, split_mode: str | None, main_gpu: int | None, as_json: bool,
             db: str | None) -> None:
    """KL divergence, top-1 agreement and perplexity of MODEL against --reference (llama-perplexity's method);
    keep the result."""
    from ..evaluate import evaluate, read_text
    from ..history import save_eval
    from ..printers import record_table
    from ..records import EvalRecord
    from ..settings import RuntimeSettings
    from ..store import Store

    text = read_text(text_file) if text_file else None
    progress = None
    if sys.stderr.isatty():
        def progress(stage: str, done: int, total: int) -> None:
            click.echo(f"\rggprec: {stage} window {done}/{total}", err=True, nl=done == total)
    with Store(db) as store:  # opened first: a bad history path fails before the evaluation
        settings = RuntimeSettings(n_threads=n_threads).with_overrides(
            **device_overrides(rpc_servers, tensor_split, device, split_mode, main_gpu, ngl))
        result = evaluate(model, reference, text=text, n_ctx=n_ctx, chunks=chunks, settings=settings,
                          progress=progress)
        record_id = save_eval(store, result, model, settings.to_dict(), chunks)
    if as_json:
        print_json(result.to_dict())
        return
    r = result
    console().print(record_table(EvalRecord.from_result(result), title=f"{model} vs {reference}",
                                  caption=f"{r.n_tokens} tokens scored in {r.n_chunks} windows of {r.n_ctx}"
                                          f"{'; reference from cache' if r.reference_cached else ''}; "
                                          f"history row {record_id}"))


def _bar(title: str, as_json: bool) -> Any:
    """A progress bar on a terminal's stderr; nothing when piped or printing JSON."""
    from ..progress import terminal_bar

    return terminal_bar(title) if sys.stderr.isatty() and not as_json else contextlib.nullcontext()


def _keep_and_print(result: Any, as_json: bool) -> None:
    """One history row per profile (all or none), then the table or the JSON document."""
    from ..history import save_comparison
    from ..store import Store

    with Store() as store:
        save_comparison(store, result)
    if as_json:
        print_json(result.to_dict(), schema=1)
        return
    from ..compare import summary_lines
    from ..printers import to_table

    out = console()
    out.print(to_table(result.records, title=f"{result.source}: profiles vs baseline {result.baseline}, "
                                              f"accuracy vs {result.reference}", highlight=result.baseline))
    for line in summary_lines(result):
        out.print(line, highlight=False)


@main.command("compare")
@click.argument("source", type=click.Path(path_type=str))
@click.option("--profiles", "profile_list", required=True, help="Comma-separated profile names or YAML paths.")
@click.option("--baseline", default="q8_0", show_default=True, help="Profile the ratios are taken against.")
@click.option("--reference", default="f32", show_default=True, help="Profile whose build is the accuracy reference.")
@click.option("--out", "out_dir", type=click.Path(path_type=str), help="Write JSON, CSV, Markdown and PNG plots here.")
@click.option("--pp", type=click.IntRange(1), default=256, show_default=True, help="Prompt tokens per speed run.")
@click.option("--tg", type=click.IntRange(1), default=64, show_default=True, help="Generated tokens per speed run.")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True, help="Speed repetitions.")
@click.option("--ctx", "n_ctx", type=click.IntRange(16), default=512, show_default=True, help="Evaluation window.")
@click.option("--chunks", type=click.IntRange(1), default=4, show_default=True, help="Evaluation windows.")
@click.option("--text", "text_file", type=click.Path(path_type=str), help="Evaluation text file (default: shipped).")
@click.option("-t", "--threads", type=click.IntRange(1), help="CPU threads (default: all cores).")
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int,
              help="Layers to offload (-1: all; default: all with --rpc/--device, else each profile's).")
@device_options
@click.option("--imatrix", type=click.Path(path_type=str),
              help="Importance-matrix file every compared profile is quantized with (replaces a profile's own).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(source: str, profile_list: str, baseline: str, reference: str, out_dir: str | None, pp: int,
                tg: int, reps: int, n_ctx: int, chunks: int, text_file: str | None, threads: int | None,
                ngl: int | None, rpc_servers: tuple[str, ...], tensor_split: str | None, device: str | None,
                split_mode: str | None, main_gpu: int | None, imatrix: str | None, as_json: bool) -> None:
    """Build, run and evaluate several profiles of SOURCE side by side."""
    from ..compare import compare
    from ..evaluate import read_text
    text = None if text_file is None else read_text(text_file)
    devices = device_overrides(rpc_servers, tensor_split, device, split_mode, main_gpu, ngl)
    with _bar("compare", as_json) as progress:
        result = compare(source, profile_list.split(","), baseline=baseline, reference=reference, out_dir=out_dir,
                         pp=pp, tg=tg, reps=reps, n_ctx=n_ctx, chunks=chunks, threads=threads, text=text,
                         progress=progress, devices=devices, imatrix=imatrix)
    _keep_and_print(result, as_json)


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=str), help="Where tables and plots go "
              "(default: the cache directory's demo/).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def demo_cmd(out_dir: str | None, as_json: bool) -> None:
    """The demo: SmolLM2-135M as mixed, mixed-split-head, q8_0, q4_0 and KV-cache variants, measured here."""
    from ..compare import demo

    with _bar("demo", as_json) as progress:
        result = demo(out_dir, progress=progress)
    _keep_and_print(result, as_json)
