"""Writing output files safely: to a temporary file beside the target, renamed only when complete.

Two ext4 behaviours (its default `auto_da_alloc`) cost whole seconds on model-sized outputs and are avoided
here: a file opened with O_TRUNC while it exists, even empty, is written back in full when it is closed,
and a rename that replaces an existing file writes the new one back first. So the temporary path is a
fresh name the writer creates (not an empty file it truncates), and an existing target is replaced by
exchanging the two names (renameat2 RENAME_EXCHANGE, no write-back) and deleting the old file. The old
file's cached pages are dropped before the new file is written (posix_fadvise DONTNEED; the file itself is
untouched until the rename), so the two do not compete for memory: with the page cache full, writing 1.3 GB
beside 1.3 GB of the old output's pages cost ~1 s more system time in reclaim than writing after a
truncation (llama-quantize's way). Measured with scripts/bench_quantize.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import stat
import sys
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
    """Yield a temporary path in the target's directory, not yet created (the block creates the file);
    rename it onto the target when the block succeeds, delete it when the block fails, so a failed write
    leaves nothing behind."""
    out = check_output(path, force=force, source=source)
    tmp = _new_temp_name(out)
    _drop_cached_pages(out)
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        note_removed(e, tmp)
        raise


def _new_temp_name(out: Path) -> Path:
    """A name beside `out` that no file has: `.NAME.RANDOM.tmp`. The writer creates the file (with mode
    0666 minus the umask, as the output itself would be)."""
    for _ in range(100):
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        if not os.path.lexists(tmp):
            return tmp
    raise GgprecError(f"{out}: cannot find a free temporary name beside it")


def _drop_cached_pages(path: Path) -> None:
    """Evict an existing file's clean pages from the page cache (a hint; nothing happens where unsupported)."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO there must not hang us
    except OSError:
        return  # no such file (the usual case), or not readable
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace(tmp: Path, out: Path) -> None:
    """os.replace(tmp, out); over an existing file, by exchanging the names and deleting the old file
    (see the module's docstring), where the system has renameat2."""
    if os.path.lexists(out) and _exchange(tmp, out):
        tmp.unlink(missing_ok=True)  # the old file, now under the temporary name
        return
    os.replace(tmp, out)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing names (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    except (OSError, AttributeError):  # no renameat2 in this C library
        return False
    return rc == 0  # e.g. EINVAL on a file system without exchange: os.replace instead


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
