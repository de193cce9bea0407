"""Ctrl-C and SIGTERM: long commands stop, exit 130 / 143 with one line, and leave nothing behind.

The real cases run `ggprec` as a process on the real SmolLM2 and signal it while llama.cpp works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ggprec import interrupts
from ggprec.interrupts import Interrupted

ROOT = Path(__file__).parents[1]


# --- the module --------------------------------------------------------------------------------------


def test_a_signal_under_guard_raises_interrupted_with_the_shell_exit_code() -> None:
    with pytest.raises(Interrupted) as e, interrupts.guard():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises at the next bytecode
    assert (e.value.exit_code, str(e.value)) == (143, "interrupted (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_deferred_block_finishes_before_the_signal_is_raised() -> None:
    done = []
    with pytest.raises(Interrupted) as e, interrupts.guard():
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the block")
        done.append("after the block")  # not reached
    assert done == ["rest of the block"] and e.value.exit_code == 130


def test_a_callback_is_never_interrupted_inside_the_signal_waits_for_check() -> None:
    @interrupts.callback
    def called_from_c() -> str:
        signal.raise_signal(signal.SIGINT)
        return "finished"

    with pytest.raises(Interrupted), interrupts.guard():
        assert called_from_c() == "finished"
        assert interrupts.requested()
        interrupts.check()


def test_an_interrupted_atomic_output_is_removed_and_named(tmp_path: Path) -> None:
    from ggprec.fileio import atomic_output

    with pytest.raises(Interrupted) as e, interrupts.guard(), atomic_output(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        signal.raise_signal(signal.SIGINT)
    assert list(tmp_path.iterdir()) == []
    assert str(e.value) == f"interrupted (SIGINT); removed partial output {tmp}"


# --- real commands -----------------------------------------------------------------------------------


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGPREC_DB": str(tmp_path / "history.db")}
    return subprocess.Popen([sys.executable, "-m", "ggprec.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(condition, proc: subprocess.Popen[str], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"ggprec ended (code {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _quantizer_writing(out_dir: Path) -> bool:
    """llama.cpp has started writing the temporary output (ggprec creates it empty before the call)."""
    return any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in out_dir.iterdir())


def _interrupt_quantize(tmp_path: Path, source: Path, profile: str, signum: int) -> tuple[int, list[str], Path]:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _start(["quantize", str(source), "--profile", profile, "-o", str(out_dir / "model.gguf"), "-t", "2"],
                  tmp_path)
    _wait_for(lambda: _quantizer_writing(out_dir), proc, "llama.cpp writes the output")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.splitlines(), out_dir


@pytest.mark.slow
def test_sigint_during_a_real_quantize_exits_130_and_leaves_nothing(tmp_path: Path, demo_f32: Path) -> None:
    code, err, out_dir = _interrupt_quantize(tmp_path, demo_f32, "q8_0", signal.SIGINT)
    assert code == 130
    assert len(err) == 1 and err[0].startswith("ggprec: interrupted (SIGINT); removed partial output "), err
    assert list(out_dir.iterdir()) == []  # no .tmp, no model.gguf


@pytest.mark.slow
def test_sigterm_during_a_split_head_quantize_removes_the_intermediate_directory(tmp_path: Path,
                                                                                 demo_f32: Path) -> None:
    code, err, out_dir = _interrupt_quantize(tmp_path, demo_f32, "mixed-split-head", signal.SIGTERM)
    assert code == 143
    assert len(err) == 1 and err[0].startswith("ggprec: interrupted (SIGTERM); removed partial output "), err
    assert ".ggprec-split-" in err[0]  # the intermediate directory was there, and is gone
    assert list(out_dir.iterdir()) == []


def _maps(pid: int, path: Path) -> bool:
    try:
        return str(path) in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the model loaded")
def test_sigint_during_eval_exits_130_and_stores_nothing(tmp_path: Path, demo_model: Path, demo_f32: Path) -> None:
    from ggprec.evaluate import default_text, reference_cache_dir
    from ggprec.store import Store

    text = tmp_path / "text.txt"
    text.write_text(default_text()[::-1])  # a text no earlier test cached reference log-probs for
    cached_before = set(reference_cache_dir().glob("*")) if reference_cache_dir().is_dir() else set()
    proc = _start(["eval", str(demo_model), "--reference", str(demo_f32), "--text", str(text), "--ctx", "256",
                   "-t", "2"], tmp_path)
    # llama.cpp maps the reference's weights when it loads them for the windows; then it decodes.
    _wait_for(lambda: _maps(proc.pid, demo_f32), proc, "the reference is loaded")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.splitlines() == ["ggprec: interrupted (SIGINT)"]
    cached_after = set(reference_cache_dir().glob("*")) if reference_cache_dir().is_dir() else set()
    assert cached_after == cached_before  # no half-written reference cache
    with Store(tmp_path / "history.db") as store:
        assert store.query() == []
