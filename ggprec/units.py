"""Byte units, one definition for every module that prints or budgets memory."""

MIB = 2**20
GIB = 2**30


def size_text(n_bytes: float) -> str:
    """Bytes in the unit that shows them: MiB below 1 GiB (a 3 MiB need must not read "0.00 GiB")."""
    return f"{n_bytes / GIB:.2f} GiB" if abs(n_bytes) >= GIB else f"{n_bytes / MIB:.1f} MiB"
