"""Model identity: a file's sha256, computed once and cached by path + size + mtime."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ggprec.hashing import model_sha256


def test_model_sha256_is_the_file_hash_and_is_kept_in_the_cache_dir(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGPREC_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.bin"
    f.write_bytes(b"abc")
    assert model_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    assert (tmp_path / "cache" / "sha256-cache.json").is_file()
    f.write_bytes(b"abcd")
    assert model_sha256(f) == hashlib.sha256(b"abcd").hexdigest()


def test_model_sha256_is_the_file_digest_and_cached_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGPREC_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 1000)
    assert model_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    st = model.stat()
    model.write_bytes(b"GGUF" + b"\1" * 1000)  # same size, same mtime: the cached digest stands
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_sha256(model) == hashlib.sha256(b"GGUF" + b"\0" * 1000).hexdigest()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert model_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
