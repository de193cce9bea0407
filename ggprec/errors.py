"""The one exception type the CLI turns into a one-line message and exit code 2, and the helpers that
keep such a message one line when it quotes a file's contents."""

from __future__ import annotations

QUOTE_LIMIT = 120  # characters of a name from a file that a message quotes


class GgprecError(Exception):
    """Bad input or an impossible request: the message is shown to the user as it is."""


class CorruptGGUFError(GgprecError):
    """A GGUF header that does not parse: where the reader stopped, and why."""

    def __init__(self, offset: int, reason: str, path: object = None) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}corrupt GGUF header at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason

    def with_path(self, path: object) -> CorruptGGUFError:
        return CorruptGGUFError(self.offset, self.reason, path)


def safe_text(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` as text fit to quote in a one-line message: control characters (newline, NUL, ESC, DEL,
    C1 codes, line/paragraph separators) escaped as \\xNN or \\uNNNN, cut to about `limit` characters
    with the total length said. Text from a file reaches the terminal only through this."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    out = []
    for ch in text[:limit] if cut else text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    if cut:
        out.append(f"... ({len(text):,} characters)")
    return "".join(out)
