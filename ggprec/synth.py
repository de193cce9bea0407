"""Synthetic GGUF models of real shapes: llama-architecture tensors with seeded random weights and a
byte-level BPE tokenizer that llama.cpp loads.

They stand in for real models wherever only shapes matter (memory, speed, planning); their weights
are random, so they say nothing about accuracy. `sparse=True` writes the header and leaves the data
region as a hole, so 8B and 70B shapes cost no disk yet llama.cpp can still simulate loading them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import GgprecError
from .fileio import atomic_output


@dataclass(frozen=True)
class SynthShape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx: int = 4096
    tied: bool = True
    n_merges: int | None = None  # default: one merge per non-byte token
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


PRESETS: dict[str, SynthShape] = {
    # Heads of 64 so flash attention with a quantized KV cache works on every backend; rows of 256
    # so K-quants apply; a few MB in f16.
    "tiny": SynthShape(2, 256, 4, 2, 512, 1024, n_ctx=2048),
    "smollm2-135m": SynthShape(30, 576, 9, 3, 1536, 49152, n_ctx=8192, n_merges=48900, rope_base=100000.0),
    "llama-3.2-1b": SynthShape(16, 2048, 32, 8, 8192, 128256, n_ctx=131072, n_merges=280147,
                               rope_base=500000.0),
    "llama-3-8b": SynthShape(32, 4096, 32, 8, 14336, 128256, n_ctx=8192, tied=False, n_merges=280147,
                             rope_base=500000.0),
    "llama-3-70b": SynthShape(80, 8192, 64, 8, 28672, 128256, n_ctx=8192, tied=False, n_merges=280147,
                              rope_base=500000.0),
}

SYNTH_TYPES = ("f32", "f16", "bf16")
N_SPECIAL = 2  # <s>, </s>


def shape_for(preset: str | None, **overrides: int | bool | None) -> SynthShape:
    """A preset's shape with explicit dimensions replacing its values (None leaves them)."""
    if preset is None:
        base = PRESETS["tiny"]
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise GgprecError(f"unknown preset '{preset}' (one of: {', '.join(PRESETS)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "n_vocab" in given and "n_merges" not in given:
        given["n_merges"] = None  # the preset's merge count belongs to its vocabulary: one per merged token
    shape = replace(base, **given)
    for dim in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_vocab", "n_ctx"):
        if getattr(shape, dim) < 1:
            raise GgprecError(f"{dim} must be a positive number, not {getattr(shape, dim)}")
    if shape.n_merges is not None and shape.n_merges < 0:
        raise GgprecError(f"n_merges must not be negative, not {shape.n_merges}")
    if shape.n_embd % shape.n_head or shape.n_head % shape.n_head_kv:
        raise GgprecError(
            f"n_embd {shape.n_embd} must divide by n_head {shape.n_head}, "
            f"which must divide by n_head_kv {shape.n_head_kv}"
        )
    if shape.n_vocab < 256 + N_SPECIAL + 1:
        raise GgprecError(f"n_vocab must be at least {256 + N_SPECIAL + 1} (256 byte tokens + specials)")
    return shape


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer(shape: SynthShape) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: 256 byte tokens, then two- and three-byte merges, then specials."""
    alphabet = _byte_alphabet()
    n_merged = shape.n_vocab - 256 - N_SPECIAL
    tokens = list(alphabet)
    merges: list[str] = []
    n_merges = shape.n_merges if shape.n_merges is not None else n_merged
    # Pairs and triples of byte characters in a fixed order: every merged token's merge is valid.
    i = 0
    while len(tokens) < 256 + n_merged or len(merges) < n_merges:
        a = alphabet[i % 256]
        b = alphabet[(i // 256) % 256]
        if i < 65536:
            left, right = a, b
        else:
            j = i - 65536
            left, right = alphabet[j % 256] + alphabet[(j // 256) % 256], alphabet[(j // 65536) % 256]
        if len(tokens) < 256 + n_merged:
            tokens.append(left + right)
        if len(merges) < n_merges:
            merges.append(f"{left} {right}")
        i += 1
    tokens += ["<s>", "</s>"]
    types = [1] * (len(tokens) - N_SPECIAL) + [3] * N_SPECIAL  # normal, control
    return tokens, types, merges


def tensor_shapes(shape: SynthShape) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and numpy shapes (rows, row length) in llama.cpp's order for the llama arch."""
    e, hd, ff = shape.n_embd, shape.head_dim, shape.n_ff
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (shape.n_vocab, e))]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (e,)),
            (p + "attn_q.weight", (shape.n_head * hd, e)),
            (p + "attn_k.weight", (shape.n_head_kv * hd, e)),
            (p + "attn_v.weight", (shape.n_head_kv * hd, e)),
            (p + "attn_output.weight", (e, shape.n_head * hd)),
            (p + "ffn_norm.weight", (e,)),
            (p + "ffn_gate.weight", (ff, e)),
            (p + "ffn_up.weight", (ff, e)),
            (p + "ffn_down.weight", (e, ff)),
        ]
    out.append(("output_norm.weight", (e,)))
    if not shape.tied:
        out.append(("output.weight", (shape.n_vocab, e)))
    return out


def write_synth(
    path: str | os.PathLike[str],
    shape: SynthShape,
    dtype: str = "f16",
    seed: int = 0,
    sparse: bool = False,
    force: bool = False,
    name: str = "ggprec-synth",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic llama-architecture GGUF; returns the path. Weights ~ N(0, 0.02), norms 1."""
    import gguf
    import numpy as np

    if dtype not in SYNTH_TYPES:
        raise GgprecError(f"synthetic weights are one of {', '.join(SYNTH_TYPES)}, not '{dtype}'")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    gtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
    elem_bytes = {"f32": 4, "f16": 2, "bf16": 2}[dtype]

    with atomic_output(path, force=force) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name)
        w.add_file_type(ftype)
        w.add_block_count(shape.n_layer)
        w.add_context_length(shape.n_ctx)
        w.add_embedding_length(shape.n_embd)
        w.add_feed_forward_length(shape.n_ff)
        w.add_head_count(shape.n_head)
        w.add_head_count_kv(shape.n_head_kv)
        w.add_rope_dimension_count(shape.head_dim)
        w.add_rope_freq_base(shape.rope_base)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(shape.n_vocab)
        tokens, types, merges = tokenizer(shape)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 2)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)

        tensors = tensor_shapes(shape)
        for tname, tshape in tensors:
            is_norm = len(tshape) == 1  # norms stay f32, as llama.cpp's converters write them
            n = int(np.prod(tshape))
            if is_norm:
                w.add_tensor_info(tname, tshape, np.dtype(np.float32), n * 4)
            else:
                w.add_tensor_info(tname, tshape, np.dtype(np.float16 if dtype == "f16" else np.float32),
                                  n * elem_bytes, raw_dtype=gtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if sparse:
            _leave_data_as_hole(w, [int(np.prod(s)) * (4 if len(s) == 1 else elem_bytes) for _, s in tensors])
        else:
            for i, (_, tshape) in enumerate(tensors):
                w.write_tensor_data(_weights(tshape, dtype, seed, i))
                if progress:
                    progress(i + 1, len(tensors))
        w.close()
    return Path(path)


def _weights(shape: tuple[int, ...], dtype: str, seed: int, index: int):  # -> np.ndarray
    import numpy as np

    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([seed, index])  # per-tensor stream: deterministic whatever the order
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if dtype == "f32":
        return x
    if dtype == "f16":
        return x.astype(np.float16)
    # bf16: round to nearest even on the upper 16 bits
    bits = x.view(np.uint32)
    bits = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (bits >> np.uint32(16)).astype(np.uint16)


def _leave_data_as_hole(writer, sizes: list[int]) -> None:  # writer: gguf.GGUFWriter
    fout = writer.fout[0]
    align = writer.data_alignment
    pos = fout.tell()
    pos += -pos % align
    for n in sizes:
        pos += n + (-n % align)
    fout.truncate(pos)
    fout.seek(pos)
    writer.tensors[0].clear()
