#!/usr/bin/env python3
"""Fuzz ggprec's GGUF header reader: every input must give a ModelInfo or a one-line GgprecError.

Structure-aware and seeded. The seeds are real headers (the SmolLM2 demo model and the tiny synthetic
model); this script walks each seed's layout itself (independently of ggprec's reader) and mutates it:

- field overwrites with boundary values (counts, string and array lengths, value and element type ids,
  dimension counts, dimensions, ggml type ids, tensor offsets),
- type swaps: a metadata value the reader uses stored with another type (a float NaN/inf, a bool, a
  string, a negative or huge integer, a list of the wrong length, a nested list) or a scalar where a
  list is expected,
- huge string lengths, huge layer numbers and control characters in tensor names, deep nesting,
  duplicate keys and names, truncations and random byte flips.

Split models too: each shard of a pair made from the tiny model is mutated with the other shard beside
it. Only the header is fuzzed: each input is the mutated header written to tmpfs and extended sparsely to
the seed's file size, so an input costs a header write, not a model copy.

A crash is an exception that is not a GgprecError, or a message that is not one bounded line free of
control characters; each crash's input is saved as a reproducer (`ggprec inspect FILE`). Also reported:
inputs, slowest input, and memory two ways: the process's peak RSS above its RSS before the first input
(an upper bound of every input's extra memory, at no cost per input), and the exact peak of Python
allocations (tracemalloc) of every `--trace-every`-th input (tracemalloc slows the reader 10x).

Usage: python scripts/fuzz_gguf.py [--inputs N] [--seed S] [--out DIR] [--model PATH] [--trace-every K]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_MESSAGE = 1000  # characters of an acceptable error message

# value type ids (GGUF spec), kept here so the fuzzer does not trust the module it tests
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
          F64: "d"}
U32_EDGES = (0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 255, 256, 4096, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
U64_EDGES = (0, 1, 2, 8, 64, 4096, 65536, 1 << 20, (1 << 20) + 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40,
             1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
# Keys the reader's hyper-parameters, alignment and split handling read ({arch} filled in).
USED_KEYS = ("general.architecture", "general.alignment", "general.name", "{arch}.block_count",
             "{arch}.embedding_length", "{arch}.attention.head_count", "{arch}.attention.head_count_kv",
             "{arch}.feed_forward_length", "{arch}.context_length", "{arch}.vocab_size",
             "{arch}.attention.key_length", "{arch}.attention.value_length", "{arch}.attention.sliding_window",
             "{arch}.expert_count", "{arch}.expert_used_count", "{arch}.expert_feed_forward_length",
             "tokenizer.ggml.tokens", "split.count", "split.no", "split.tensors.count")


@dataclass
class Field:
    offset: int
    fmt: str  # struct format of the field ("<I", "<Q", or a scalar value's)
    kind: str


@dataclass
class Pair:
    key: str
    start: int  # first byte of the key's length
    end: int  # one past the value
    vtype: int


@dataclass
class TensorEntry:
    name: str
    start: int
    name_end: int  # one past the name bytes


@dataclass
class Seed:
    label: str
    header: bytes  # bytes [0, data_offset)
    size: int  # the whole file's size
    arch: str
    n_layer: int
    fields: dict[str, list[Field]] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    tensors: list[TensorEntry] = field(default_factory=list)
    kv_end: int = 0
    filename: str = "input.gguf"  # the mutated input's name (a shard's name for a split model)
    siblings: dict[str, Path] = field(default_factory=dict)  # unmutated files beside it (the other shards)


def walk(label: str, path: Path) -> Seed:
    """Map a (valid) GGUF header: every count, length, type id and value a mutation may target."""
    data = path.read_bytes() if path.stat().st_size < 64 << 20 else _head(path, 64 << 20)
    fields: dict[str, list[Field]] = {}

    def add(kind: str, offset: int, fmt: str) -> None:
        fields.setdefault(kind, []).append(Field(offset, fmt, kind))

    pos = 8
    add("version", 4, "<I")
    add("n_tensors", 8, "<Q")
    add("n_kv", 16, "<Q")
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(kind: str) -> str:
        nonlocal pos
        add(kind, pos, "<Q")
        (n,) = struct.unpack_from("<Q", data, pos)
        s = data[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        return s

    def value(vtype: int, depth: int) -> object:
        nonlocal pos
        if vtype in SCALAR:
            fmt = "<" + SCALAR[vtype]
            add("scalar_value", pos, fmt)
            (v,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return v
        if vtype == STR:
            return string("string_length")
        add("element_type", pos, "<I")
        add("array_count", pos + 4, "<Q")
        etype, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if etype == STR and count > 64:  # long lists: sample a few element lengths, skip the rest fast
            for i in range(count):
                if i < 32 or i % 997 == 0:
                    add("element_length", pos, "<Q")
                (n,) = struct.unpack_from("<Q", data, pos)
                pos += 8 + n
            return None
        if etype in SCALAR and count > 64:
            pos += count * struct.calcsize("<" + SCALAR[etype])
            return None
        return [value(etype, depth + 1) for _ in range(count)]

    pairs, meta = [], {}
    for _ in range(n_kv):
        start = pos
        key = string("key_length")
        add("value_type", pos, "<I")
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        meta[key] = value(vtype, 0)
        pairs.append(Pair(key, start, pos, vtype))
    kv_end = pos
    tensors = []
    for _ in range(n_tensors):
        start = pos
        name = string("name_length")
        name_end = pos
        add("n_dims", pos, "<I")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(n_dims):
            add("dimension", pos, "<Q")
            pos += 8
        add("ggml_type", pos, "<I")
        add("tensor_offset", pos + 4, "<Q")
        pos += 12
        tensors.append(TensorEntry(name, start, name_end))
    alignment = meta.get("general.alignment", 32)
    data_offset = -(-pos // alignment) * alignment
    arch = str(meta.get("general.architecture", "llama"))
    return Seed(label, bytes(data[:data_offset]), path.stat().st_size, arch, int(meta.get(f"{arch}.block_count", 0)),
                fields, pairs, tensors, kv_end)


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# --- encoding values of any type (independent of ggprec.gguf_layout) ------------------------------


def enc_str(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def enc_value(vtype: int, v: object) -> bytes:
    if vtype in SCALAR:
        return struct.pack("<" + SCALAR[vtype], v)
    if vtype == STR:
        return enc_str(v)  # type: ignore[arg-type]
    if isinstance(v, Nested):
        return v.encode()
    etype, items = v  # type: ignore[misc]
    return struct.pack("<IQ", etype, len(items)) + b"".join(enc_value(etype, x) for x in items)


class Nested:
    """`depth` arrays around a list of u32, encoded without recursion (depths of thousands)."""

    def __init__(self, depth: int, leaf: list[int]) -> None:
        self.depth, self.leaf = depth, leaf

    def encode(self) -> bytes:
        out = struct.pack(f"<IQ{len(self.leaf)}I", U32, len(self.leaf), *self.leaf)
        for _ in range(self.depth - 1):
            out = struct.pack("<IQ", ARR, 1) + out
        return out


def nested(depth: int, leaf: list[int]) -> tuple[int, object]:
    return ARR, Nested(depth, leaf)


def odd_value(rng: random.Random, n_layer: int) -> tuple[int, object]:
    """A value of a type (or length) the reader does not expect for a key it uses."""
    k = rng.randrange(19)
    if k == 0:
        return F32, rng.choice([math.nan, math.inf, -math.inf, 1e30, 2.5, -1.0, 0.0])
    if k == 1:
        return F64, rng.choice([math.nan, math.inf, -math.inf, 1e308, 5e-324, 64.0])
    if k == 2:
        return BOOL, rng.choice([True, False])
    if k == 3:
        return STR, rng.choice(["", "30", "abc", "\n\x1b[31mred\x00", "x" * rng.choice([1, 100, 70000])])
    if k == 4:
        return I8, rng.choice([-128, -1, 0, 127])
    if k == 5:
        return I32, rng.choice([-(2**31), -1, 2**31 - 1])
    if k == 6:
        return I64, rng.choice([-(2**63), -1, 2**63 - 1])
    if k == 7:
        return U64, rng.choice(U64_EDGES)
    if k == 8:
        return U32, rng.choice(U32_EDGES)
    if k == 9:
        return U16, rng.choice([0, 1, 2, 65535])
    if k == 10:
        n = rng.choice([0, 1, max(n_layer - 1, 0), n_layer, n_layer + 1, 4097, 10000])
        return ARR, (U32, [rng.choice(U32_EDGES) for _ in range(n)])
    if k == 11:
        return ARR, (F32, [rng.choice([math.nan, 1.5, 8.0]) for _ in range(max(n_layer, 1))])
    if k == 12:
        return ARR, (STR, ["a"] * rng.choice([0, 1, n_layer, 5000]))
    if k == 13:
        return ARR, (BOOL, [True] * max(n_layer, 1))
    if k == 14:
        return nested(rng.choice([2, 3, 4, 10, 100, 1000]), [1, 2])
    if k == 15:
        return ARR, (I64, [-1] * max(n_layer, 1))
    if k == 16:
        return ARR, (ARR, [(U32, [1])] * rng.choice([1, 5000]))
    if k == 17:
        return U8, rng.choice([0, 255])
    return STR, "blk." + "9" * rng.choice([7, 5000])


# --- mutations: each returns (header bytes, file size) ---------------------------------------------


def overwrite(rng: random.Random, s: Seed, h: bytearray) -> int:
    kind = rng.choice(sorted(s.fields))
    f = rng.choice(s.fields[kind])
    fmt = f.fmt
    if fmt == "<I":
        v = rng.choice(U32_EDGES + (rng.randrange(1 << 32),))
    elif fmt == "<Q":
        v = rng.choice(U64_EDGES + (s.size, len(s.header), rng.randrange(1 << 64), rng.randrange(1 << 22)))
    else:
        code = fmt[1]
        if code in "fd":
            v = rng.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e38])
        elif code == "?":
            v = rng.choice([True, False])
        else:
            bits = struct.calcsize(fmt) * 8
            lo, hi = (0, 2**bits - 1) if code.isupper() else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            v = rng.choice([lo, hi, 0, 1, lo + 1, hi - 1])
        struct.pack_into(fmt, h, f.offset, v)
        return s.size
    struct.pack_into(fmt, h, f.offset, v)
    return s.size


def type_swap(rng: random.Random, s: Seed) -> tuple[bytes, int]:
    """A key the reader uses re-stored with another type or shape (replaced, or added if absent)."""
    key = rng.choice(USED_KEYS).format(arch=s.arch)
    vtype, value = odd_value(rng, s.n_layer)
    pair = enc_str(key) + struct.pack("<I", vtype) + enc_value(vtype, value)
    old = next((p for p in s.pairs if p.key == key), None)
    if old is None or rng.random() < 0.1:  # added (or duplicated)
        n_kv = struct.unpack_from("<Q", s.header, 16)[0] + 1
        h = s.header[:16] + struct.pack("<Q", n_kv) + s.header[24:s.kv_end] + pair + s.header[s.kv_end:]
        return h, s.size + len(pair) + 64
    h = s.header[: old.start] + pair + s.header[old.end :]
    return h, s.size + max(len(h) - len(s.header), 0) + 64


def rename_tensor(rng: random.Random, s: Seed) -> tuple[bytes, int]:
    t = rng.choice(s.tensors)
    k = rng.randrange(6)
    if k == 0:
        name = "blk." + "9" * rng.choice([6, 7, 20, 4400, 5000, 100000]) + ".attn_q.weight"
    elif k == 1:
        name = t.name + rng.choice(["\n", "\x1b[2J", "\x00", "\r", "\u2028", "\x7f", "\x9b"])
    elif k == 2:
        name = rng.choice(s.tensors).name  # a duplicate
    elif k == 3:
        name = "x" * rng.choice([0, 64, 65536, 65537, 200000])
    elif k == 4:
        name = f"blk.{rng.choice([s.n_layer, s.n_layer + 1, 99999, 100000, 10**6])}.attn_q.weight"
    else:
        name = "blk.\u0661\u0662.attn_q.weight"  # Arabic-Indic digits
    h = s.header[: t.start] + enc_str(name) + s.header[t.name_end :]
    return h, s.size + max(len(h) - len(s.header), 0) + 64


def nest_deep(rng: random.Random, s: Seed) -> tuple[bytes, int]:
    p = rng.choice(s.pairs)
    vtype, value = nested(rng.choice([3, 4, 5, 50, 1000, 5000]), [0])
    pair = enc_str(p.key) + struct.pack("<I", vtype) + enc_value(vtype, value)
    h = s.header[: p.start] + pair + s.header[p.end :]
    return h, s.size + max(len(h) - len(s.header), 0) + 64


def huge_length(rng: random.Random, s: Seed, h: bytearray) -> int:
    kinds = [k for k in ("key_length", "string_length", "element_length", "name_length", "array_count")
             if k in s.fields]
    f = rng.choice(s.fields[rng.choice(kinds)])
    v = rng.choice([(1 << 20) + 1, 1 << 24, s.size - f.offset - 8, s.size, len(s.header), 1 << 63, (1 << 64) - 1])
    struct.pack_into("<Q", h, f.offset, max(v, 0))
    return s.size


def flips(rng: random.Random, h: bytearray, n: int) -> None:
    for _ in range(n):
        # Half the flips land in the first 4 KiB (preamble, first keys) or the tensor infos, where a
        # flipped byte changes structure rather than a token's spelling.
        at = rng.randrange(min(4096, len(h))) if rng.random() < 0.5 else rng.randrange(len(h))
        h[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)


MUTATIONS = ("overwrite", "type_swap", "rename_tensor", "nest_deep", "huge_length", "truncate", "flips")


def mutate(rng: random.Random, s: Seed) -> tuple[str, bytes, int]:
    kind = rng.choice(MUTATIONS)
    if kind in ("type_swap", "rename_tensor", "nest_deep"):
        h, size = {"type_swap": type_swap, "rename_tensor": rename_tensor, "nest_deep": nest_deep}[kind](rng, s)
        h = bytearray(h)
    else:
        h = bytearray(s.header)
        size = s.size
        if kind == "overwrite":
            size = overwrite(rng, s, h)
        elif kind == "huge_length":
            size = huge_length(rng, s, h)
        elif kind == "truncate":
            cut = rng.randrange(1, len(h))
            return kind, bytes(h[:cut]), cut
        else:
            flips(rng, h, rng.choice([1, 1, 2, 4, 16]))
    if rng.random() < 0.15:  # stack a few flips on top
        flips(rng, h, rng.randrange(1, 4))
        kind += "+flips"
    return kind, bytes(h), max(size, len(h))


# --- running ---------------------------------------------------------------------------------------


@dataclass
class Report:
    inputs: int = 0
    ok: int = 0
    errors: int = 0
    crashes: list[str] = field(default_factory=list)
    by_mutation: Counter[str] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    peak_mem: tuple[int, str] = (0, "")  # tracemalloc peak of the sampled inputs
    traced: int = 0
    rss_start: int = 0  # bytes
    over_time: int = 0
    over_mem: int = 0
    seconds: float = 0.0

    @property
    def rss_extra(self) -> int:
        return max(max_rss() - self.rss_start, 0)

    def summary(self) -> str:
        return (f"inputs {self.inputs:,}: {self.ok:,} read, {self.errors:,} GgprecError, {len(self.crashes)} crashes; "
                f"slowest input {self.slowest[0] * 1000:.1f} ms ({self.slowest[1]}); peak RSS "
                f"{max_rss() / 2**20:.0f} MiB, {self.rss_extra / 2**20:.1f} MiB above the start (bound of any "
                f"input's extra memory); traced peak of {self.traced:,} sampled inputs "
                f"{self.peak_mem[0] / 2**20:.2f} MiB ({self.peak_mem[1]}); inputs over 0.5 s: {self.over_time}, "
                f"over 64 MiB: {self.over_mem}; {self.seconds:.0f} s "
                f"({self.inputs / max(self.seconds, 1e-9):.0f} inputs/s)")


def max_rss() -> int:
    """The process's peak RSS (VmHWM, which reset_peak_rss() lowers to the current RSS), in bytes."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Forget the peak of the setup (gguf-py and numpy writing the shard seeds): Linux's clear_refs 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check_message(msg: str) -> str | None:
    """Why an error message breaks the one-line promise, or None."""
    if len(msg) > MAX_MESSAGE:
        return f"message of {len(msg)} characters"
    bad = [c for c in msg if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    return f"control character {bad[0]!r} in the message" if bad else None


def fuzz(seeds: list[Seed], n: int, seed: int, out: Path | None, work: Path, progress: bool = False,
         max_seconds: float = 0.5, max_bytes: int = 64 << 20, trace_every: int = 20) -> Report:
    from ggprec.errors import GgprecError
    from ggprec.gguf_info import read_gguf

    rng = random.Random(seed)
    rep = Report()
    paths = []
    for k, s in enumerate(seeds):
        (work / str(k)).mkdir(exist_ok=True)
        for name, target in s.siblings.items():
            (work / str(k) / name).symlink_to(target.resolve())
        paths.append(work / str(k) / s.filename)
    reset_peak_rss()
    rep.rss_start = current_rss()
    start_all = time.perf_counter()
    for i in range(n):
        s, path = seeds[i % len(seeds)], paths[i % len(seeds)]
        kind, header, size = mutate(rng, s)
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(size)  # sparse: the data region is a hole
        label = f"{s.label} #{i} {kind}"
        rep.by_mutation[kind.split("+")[0]] += 1
        traced = trace_every > 0 and i % trace_every == 0
        if traced:
            tracemalloc.start()
        t0 = time.perf_counter()
        problem = None
        try:
            read_gguf(path)
            rep.ok += 1
        except GgprecError as e:
            rep.errors += 1
            problem = check_message(str(e))
        except Exception as e:  # the bug this fuzzer hunts  # noqa: BLE001
            problem = f"{type(e).__name__}: {str(e)[:200]}"
        dt = time.perf_counter() - t0
        rep.inputs += 1
        if traced:
            mem = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rep.traced += 1
            rep.over_mem += mem > max_bytes
            if mem > rep.peak_mem[0]:
                rep.peak_mem = (mem, label)
        else:  # tracemalloc makes the reader 10x slower: time only untraced inputs
            rep.over_time += dt > max_seconds
            if dt > rep.slowest[0]:
                rep.slowest = (dt, label)
        if problem is not None:
            rep.crashes.append(f"{label}: {problem}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / f"crash-{seed}-{i}.gguf", "wb") as f:
                    f.write(header)
                    f.truncate(size)
        if progress and (i + 1) % 5000 == 0:
            rep.seconds = time.perf_counter() - start_all
            print(f"  {rep.summary()}", flush=True)
    rep.seconds = time.perf_counter() - start_all
    rep.over_mem += rep.rss_extra > max_bytes
    return rep


def default_seeds(model: Path | None, tmp: Path) -> list[Seed]:
    from ggprec.demo_model import demo_model_path
    from ggprec.synth import PRESETS, write_synth

    tiny = write_synth(tmp / "tiny.gguf", PRESETS["tiny"], dtype="f16", sparse=True)
    smol = model or demo_model_path(quiet=True)
    return [walk("tiny", tiny), walk(smol.name, smol), *split_seeds(tiny, tmp)]


def split_seeds(source: Path, tmp: Path) -> list[Seed]:
    """Both shards of a pair made from `source` (written like llama.cpp's gguf-split, by tests/shards.py),
    each mutated with the other shard beside it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shards", Path(__file__).resolve().parent.parent / "tests" /
                                                  "shards.py")
    assert spec is not None and spec.loader is not None
    shards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shards)
    pair = shards.write_shards(source, tmp / "split", 2)
    seeds = []
    for k, p in enumerate(pair):
        seed = walk(f"shard {k + 1}/2", p)
        seed.filename = f"input-{k + 1:05d}-of-00002.gguf"
        other = 1 - k
        seed.siblings = {f"input-{other + 1:05d}-of-00002.gguf": pair[other]}
        seeds.append(seed)
    return seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-crashes"), help="where reproducers go")
    parser.add_argument("--model", type=Path, help="a real GGUF to use as a seed (default: SmolLM2)")
    parser.add_argument("--trace-every", type=int, default=20, help="trace the memory of every K-th input")
    args = parser.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="ggprec-fuzz-", dir=shm) as d:
        seeds = default_seeds(args.model, Path(d))
        print(f"seeds: {', '.join(f'{s.label} ({len(s.header):,}-byte header)' for s in seeds)}; "
              f"seed {args.seed}; load average {os.getloadavg()[0]:.2f}", flush=True)
        rep = fuzz(seeds, args.inputs, args.seed, args.out, Path(d), progress=True, trace_every=args.trace_every)
    print(rep.summary())
    print("by mutation: " + ", ".join(f"{k} {v:,}" for k, v in sorted(rep.by_mutation.items())))
    for c in rep.crashes[:20]:
        print(f"CRASH {c}")
    if rep.crashes:
        print(f"reproducers in {args.out}/")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if rep.crashes or rep.over_time or rep.over_mem else 0


if __name__ == "__main__":
    sys.exit(main())
