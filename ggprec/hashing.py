"""sha256 of model files, cached by path + size + mtime so a 500 MB model is hashed once, not per run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import GgprecError

_CACHE_FILE = "sha256-cache.json"


def _cache_path() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / _CACHE_FILE


def _load(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def model_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes; reused while the file keeps its size and mtime."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise GgprecError(f"{p}: cannot read ({e.strerror})") from None
    key = str(p.resolve())
    cache_file = _cache_path()
    cache = _load(cache_file)
    hit = cache.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return str(hit["sha256"])
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    cache = _load(cache_file)  # re-read: another process may have added entries meanwhile
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        from .fileio import atomic_write_text

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps(cache, indent=1))
    except (OSError, GgprecError):
        pass  # a read-only cache only costs re-hashing
    return digest
