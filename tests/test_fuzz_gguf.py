"""A seeded subset of scripts/fuzz_gguf.py: mutated real headers (the tiny synthetic model, a shard pair
made from it, and SmolLM2) give a ModelInfo or a one-line GgprecError, never another exception. The full
run (>= 100,000 inputs) and its figures: see the README."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_fuzzer():  # -> module
    spec = importlib.util.spec_from_file_location("fuzz_gguf", ROOT / "scripts" / "fuzz_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_gguf"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_two_thousand_mutated_headers_never_crash_the_reader(tiny_model: Path, demo_model: Path) -> None:
    fuzz = load_fuzzer()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="ggprec-fuzz-", dir=shm) as d:
        seeds = [fuzz.walk("tiny", tiny_model), fuzz.walk("SmolLM2", demo_model),
                 *fuzz.split_seeds(tiny_model, Path(d))]
        report = fuzz.fuzz(seeds, 2000, seed=12, out=None, work=Path(d))
    assert report.inputs == 2000
    assert report.crashes == []
    # Every mutation kind ran, and both outcomes occur: the mutations are neither all fatal nor all harmless.
    assert set(report.by_mutation) == set(fuzz.MUTATIONS)
    assert report.ok > 0 and report.errors > 0
    assert report.over_mem == 0


def test_the_fuzzer_finds_a_crash_in_a_reader_that_trusts_its_input(tiny_model: Path, monkeypatch) -> None:  # noqa: ANN001
    # The harness itself: a reader that lets a non-GgprecError escape is reported, not hidden.
    import ggprec.gguf_info

    fuzz = load_fuzzer()
    real = ggprec.gguf_info.read_gguf

    def fragile(path: Path):  # noqa: ANN202
        info = real(path)
        return 1 // (info.hparams.n_layer - 2)  # ZeroDivisionError on the unchanged tiny model

    monkeypatch.setattr(ggprec.gguf_info, "read_gguf", fragile)
    with tempfile.TemporaryDirectory() as d:
        report = fuzz.fuzz([fuzz.walk("tiny", tiny_model)], 200, seed=3, out=Path(d) / "crashes", work=Path(d))
        assert report.crashes and all("ZeroDivisionError" in c for c in report.crashes)
        assert len(list((Path(d) / "crashes").iterdir())) == len(report.crashes)
