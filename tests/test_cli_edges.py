"""Edges of the command line: every bad input is one line and exit code 2, refused before long work;
outputs get ordinary file permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main

ROOT = Path(__file__).parents[1]


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ggprec: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["quantize"], "Missing argument 'MODEL'."),
    (["quantize", "m.gguf", "--bogus"], "--bogus"),
    (["eval", "m.gguf", "--reference", "r.gguf", "--ctx", "many"], "'many' is not a valid integer"),
    (["nosuchcommand"], "No such command 'nosuchcommand'."),
])
def test_click_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    line = _one_error_line(CliRunner().invoke(main, args))
    assert message in line and "--help" in line


def test_help_still_works() -> None:
    result = CliRunner().invoke(main, ["quantize", "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output and result.stderr == ""


def test_usage_error_in_a_real_process_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "ggprec", "run"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("ggprec: error: Missing argument 'MODEL'.") and done.stderr.count("\n") == 1


def test_eval_with_zero_threads_is_refused_like_run(tiny_model: Path) -> None:
    line = _one_error_line(CliRunner().invoke(main, ["eval", str(tiny_model), "--reference", str(tiny_model),
                                                     "-t", "0"]))
    assert line == "ggprec: error: n_threads must be at least 1 (got 0)"
    run = _one_error_line(CliRunner().invoke(main, ["run", str(tiny_model), "-t", "0"]))
    assert run == line


def test_compare_refuses_an_empty_text_before_building_anything(tiny_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import ggprec.quantize

    def no_build(*args, **kwargs):
        raise AssertionError("a variant was built before the text was checked")

    monkeypatch.setattr(ggprec.quantize, "build_variant", no_build)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    line = _one_error_line(CliRunner().invoke(main, ["compare", str(tiny_model), "--profiles", "q8_0",
                                                     "--text", str(empty)]))
    assert line == f"ggprec: error: {empty}: the text is empty"
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    line = _one_error_line(CliRunner().invoke(main, ["compare", str(tiny_model), "--profiles", "q8_0",
                                                     "--text", str(short)]))
    assert "text too short" in line


def test_a_profile_rule_with_a_numeric_role_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("rules:\n  - role: 5\n    type: f16\n")
    line = _one_error_line(CliRunner().invoke(main, ["plan", str(tiny_model), "--profile", str(profile)]))
    assert line.endswith("rules[0]: 'role' must be a role name or a list of role names, got 5")


def test_outputs_get_the_usual_permissions(tiny_model: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "q8.gguf"
        result = CliRunner().invoke(main, ["quantize", str(tiny_model), "--profile", "q8_0", "-o", str(out),
                                           "-t", "2"])
        assert result.exit_code == 0, result.output
        written = tmp_path / "rec.yaml"
        from ggprec.fileio import atomic_write_text

        atomic_write_text(written, "a: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
