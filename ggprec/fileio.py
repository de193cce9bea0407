"""Writing output files safely: to a temporary file beside the target, renamed only when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GgprecError


def check_output(
    path: str | os.PathLike[str], force: bool = False, source: str | os.PathLike[str] | None = None
) -> Path:
    """Refuse outputs that would overwrite the source model, an existing file (unless force), or
    that cannot be written; return the target path."""
    out = Path(path)
    if source is not None and out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise GgprecError(f"{out}: refusing to overwrite the source model")
    if out.is_dir():
        raise GgprecError(f"{out}: is a directory")
    if out.exists() and not force:
        raise GgprecError(f"{out}: already exists (use --force to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GgprecError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GgprecError(f"{out}: directory {parent} is not writable")
    return out


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], force: bool = False,
                  source: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto the target when the block
    succeeds, delete it when the block fails, so a failed write leaves nothing behind."""
    out = check_output(path, force=force, source=source)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise GgprecError(f"{out}: cannot write ({e.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, force: bool = True) -> Path:
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)
