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


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


model_argument = click.argument("model", type=click.Path(path_type=str))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggprec")
def main() -> None:
    """Mixed-precision plans for GGUF models, built and measured with llama.cpp."""


db_option = click.option("--db", type=click.Path(path_type=str), envvar="GGPREC_DB",
                         help="History database (default: $GGPREC_DB, else history.db in the user data dir).")

profile_option = click.option("--profile", "-p", "profile_name", required=True,
                              help="A shipped profile name (see `ggprec profiles`) or a YAML file.")
