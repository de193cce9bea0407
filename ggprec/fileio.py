"""Writing output files safely: to a temporary file beside the target, renamed only when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import GgprecError
from .interrupts import note_removed


class OutputExistsError(GgprecError):
    """The output file exists and replacing it was not asked for (the CLI names its option for that)."""


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
        raise OutputExistsError(f"{out}: already exists")
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
    tmp = _new_temp_file(out)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        note_removed(e, tmp)
        raise


def _new_temp_file(out: Path) -> Path:
    """An empty, new file beside `out`, created with mode 0666 minus the umask, as the output itself
    would be (tempfile.mkstemp's 0600 would survive the rename and hide the output from other users)."""
    for _ in range(100):
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise GgprecError(f"{out}: cannot write ({e.strerror})") from None
    raise GgprecError(f"{out}: cannot create a temporary file beside it")


@contextlib.contextmanager
def temporary_directory(beside: Path, prefix: str) -> Iterator[Path]:
    """A new directory in `beside` (intermediate files of one output), removed with its contents when
    the block ends, however it ends."""
    try:
        d = Path(os.path.realpath(beside)) / f"{prefix}{secrets.token_hex(4)}"
        d.mkdir(mode=0o700)
    except OSError as e:
        raise GgprecError(f"{beside}: cannot create a temporary directory ({e.strerror})") from None
    try:
        yield d
    except BaseException as e:
        note_removed(e, d)
        raise
    finally:
        shutil.rmtree(d, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str, force: bool = True) -> Path:
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)
