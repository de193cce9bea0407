"""The `ggprec` command group and what every command shares: one-line errors (exit 2), interrupts (130 /
143), the console, JSON output, and the common options. The commands live in the modules beside this one,
one per area, each a thin shell over library calls."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import __version__
from ..errors import GgprecError

EXIT_BAD_INPUT = 2


class LazyChoice(click.Choice):
    """A Choice whose names are read from `load()` when first needed (a value to check, the help), so that
    defining a command does not import the module that holds them (`ggprec inspect` starts faster)."""

    def __init__(self, load: Any) -> None:
        self._load, self._names = load, None
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    @choices.setter
    def choices(self, _: Any) -> None:  # Choice.__init__ assigns them: the loader is the source
        pass


class Group(click.Group):
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
            fail(f"error: {e.format_message()}{hint}", EXIT_BAD_INPUT)
        except click.ClickException as e:  # e.g. a file option Click itself could not open
            fail(f"error: {e.format_message()}", e.exit_code)
        except click.Abort:  # Ctrl-C or end of input outside a command (e.g. at a prompt)
            fail("interrupted (SIGINT)", 130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        from ..interrupts import Interrupted, guard

        try:
            with guard():
                return super().invoke(ctx)
        except GgprecError as e:
            from ..fileio import OutputExistsError

            hint = " (use --force to replace it)" if isinstance(e, OutputExistsError) else ""
            fail(f"error: {e}{hint}", EXIT_BAD_INPUT)
        except Interrupted as e:
            fail(str(e), e.exit_code)


def fail(message: str, code: int) -> None:
    """One line on stderr (starting a fresh line if a progress line was being drawn), then exit."""
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    click.echo(f"{clear}ggprec: {' '.join(message.split())}", err=True)
    sys.exit(code)


def console() -> Any:
    from rich.console import Console

    # Piped or redirected, rich assumes 80 columns and crushes wide tables: give them room instead.
    return Console() if sys.stdout.isatty() else Console(width=200)


def print_json(doc: Any, schema: int | None = None) -> None:
    """One JSON object on stdout; `schema` (the document's version, docs/json.md) goes first when given."""
    click.echo(json.dumps(doc if schema is None else {"schema": schema, **doc}, indent=2))


model_argument = click.argument("model", type=click.Path(path_type=str))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggprec")
def main() -> None:
    """Mixed-precision plans for GGUF models, built and measured with llama.cpp."""


db_option = click.option("--db", type=click.Path(path_type=str), envvar="GGPREC_DB",
                         help="History database (default: $GGPREC_DB, else history.db in the user data dir).")

profile_option = click.option("--profile", "-p", "profile_name", required=True,
                              help="A shipped profile name (see `ggprec profiles`) or a YAML file.")

# --- runtime and machine options, shared by every command that loads or plans a model ----------------

_FA = {"on": True, "off": False, "auto": None}
_RUNTIME_OPTIONS = (
    click.option("-ngl", "--n-gpu-layers", "ngl", type=int,
                 help="Layers to offload (-1: all; default: all with --rpc/--device, else the profile's)."),
    click.option("-c", "--ctx-size", "n_ctx", type=int, help="Context size in tokens."),
    click.option("-b", "--batch-size", "n_batch", type=int, help="Logical batch size."),
    click.option("-ub", "--ubatch-size", "n_ubatch", type=int, help="Physical batch size."),
    click.option("-t", "--threads", "n_threads", type=int, help="CPU threads."),
    click.option("-ctk", "--cache-type-k", "cache_type_k", help="K-cache type (f16, q8_0, q4_0, ...)."),
    click.option("-ctv", "--cache-type-v", "cache_type_v",
                 help="V-cache type (a quantized one needs flash attention)."),
    click.option("-fa", "--flash-attn", "flash_attn", type=click.Choice(["on", "off", "auto"]),
                 help="Flash attention (auto: on exactly when the V cache is quantized)."),
    click.option("-ot", "--override-tensor", "override_tensor", multiple=True, metavar="PATTERN=DEVICE",
                 help="Put tensors whose name matches the regex on DEVICE (CPU, CUDA0, ...); repeatable and "
                      "comma-separated like llama.cpp's -ot; replaces the profile's list."),
    click.option("-cmoe", "--cpu-moe", "cpu_moe", is_flag=True, help="Keep every routed expert tensor on the CPU."),
    click.option("-ncmoe", "--n-cpu-moe", "n_cpu_moe", type=click.IntRange(min=0),
                 help="Keep the routed expert tensors of the first N blocks on the CPU."),
)
_MACHINE_OPTIONS = (
    click.option("--gpu-bandwidth", "gpu_bandwidth", type=float,
                 help="The target GPU's memory bandwidth in GB/s, a spec figure (default: calibration or assumed)."),
    click.option("--host-bandwidth", "host_bandwidth", type=float,
                 help="The target host's memory bandwidth in GB/s (default: calibration or measured)."),
    click.option("--cpu-flags", "cpu_flags", metavar="FLAGS",
                 help="The target CPU's /proc/cpuinfo flags that decide llama.cpp's weight repacking, "
                      "comma-separated (e.g. avx2,avx512f; 'none'); default: this machine's."),
    click.option("--no-repack", "no_repack", is_flag=True,
                 help="The target loads without extra CPU buffers (llama.cpp's --no-repack)."),
)


def _apply(options: tuple[Any, ...]) -> Any:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


runtime_options = _apply(_RUNTIME_OPTIONS)
machine_options = _apply(_MACHINE_OPTIONS)


def runtime_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """RuntimeSettings changes from the runtime options (nothing for options not given)."""
    out: dict[str, Any] = {key: options.get(name) for key, name in (
        ("n_gpu_layers", "ngl"), ("n_ctx", "n_ctx"), ("n_batch", "n_batch"), ("n_ubatch", "n_ubatch"),
        ("n_threads", "n_threads"), ("cache_type_k", "cache_type_k"), ("cache_type_v", "cache_type_v"))}
    if options.get("flash_attn") is not None:
        out["flash_attn"] = _FA[options["flash_attn"]]
    out.update(placement_overrides(options.get("override_tensor") or (), bool(options.get("cpu_moe")),
                                   options.get("n_cpu_moe")))
    return out


def placement_overrides(override_tensor: tuple[str, ...], cpu_moe: bool, n_cpu_moe: int | None) -> dict[str, Any]:
    """RuntimeSettings changes from -ot / --cpu-moe / --n-cpu-moe (nothing for flags not given)."""
    from ..settings import ALL_LAYERS
    from ..tensor_overrides import parse_overrides

    if cpu_moe and n_cpu_moe is not None:
        raise GgprecError("--cpu-moe and --n-cpu-moe are alternatives: give one")
    out: dict[str, Any] = {}
    if override_tensor:
        out["override_tensor"] = parse_overrides(override_tensor)
    if cpu_moe or n_cpu_moe is not None:
        out["n_cpu_moe"] = ALL_LAYERS if cpu_moe else n_cpu_moe
    return out


def target_machine(options: dict[str, Any], db: str | None) -> tuple[Any, Any]:
    """(speed model, CPU buffer rules) of the machine the machine options describe (default: this one)."""
    from ..cpu_buffers import rules_for

    if options.get("cpu_flags") is None and not options.get("no_repack"):
        from ..probes import machine_buffers

        host = machine_buffers()  # this machine's rules, probing AMX once where it is advertised
    else:
        host = rules_for(options.get("cpu_flags"), bool(options.get("no_repack")))
    host_gbps, gpu_gbps = options.get("host_bandwidth"), options.get("gpu_bandwidth")
    return speed_model(host_gbps, gpu_gbps, db), host


def speed_model(host_gbps: float | None, gpu_gbps: float | None, db: str | None) -> Any:
    """The speed model from the bandwidth options and, for the devices they leave out, this machine's newest
    calibration in the history `db` (None: the default history, only if it exists)."""
    from ..calibrate import speed_model_for
    from ..store import Store

    if host_gbps is not None and gpu_gbps is not None:
        return speed_model_for(host_gbps, gpu_gbps)
    store = Store(db) if db else None
    try:
        return speed_model_for(host_gbps, gpu_gbps, store)
    finally:
        if store is not None:
            store.close()
