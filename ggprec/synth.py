"""Synthetic GGUF models of real shapes (llama, and the mixtures of experts qwen3moe, gpt-oss,
Mixtral and DeepSeek-2 with MLA) with seeded random weights and a byte-level BPE tokenizer that
llama.cpp loads.

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
    arch: str = "llama"  # llama (dense or Mixtral-style experts), qwen3moe, gpt-oss, deepseek2
    head_dim_override: int | None = None  # attention.key_length where it is not n_embd / n_head
    # Mixture of experts: 0 experts = a dense model.
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0  # feed-forward length of one routed expert (the llama arch uses n_ff)
    n_expert_shared: int = 0  # deepseek2: shared experts of n_ff_exp each
    n_layer_dense_lead: int = 0  # deepseek2: leading blocks with a dense FFN of n_ff
    # DeepSeek MLA (written as llama.cpp's converter does: attn_k_b/attn_v_b, one latent KV head).
    kv_lora_rank: int = 0
    rope_dim: int = 0  # qk_rope_head_dim
    qk_nope_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0  # gpt-oss: every other block attends to this many tokens

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.n_embd // self.n_head


# Shapes from each model's Hugging Face config.json (hidden_size, num_hidden_layers, heads, intermediate
# sizes, expert counts, vocab_size, max_position_embeddings, rope_theta, tie_word_embeddings).
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
    # A mixture of experts llama.cpp runs on a CPU in tests: qwen3moe, 4 experts, 2 used, a few MB.
    "tiny-moe": SynthShape(2, 256, 4, 2, 512, 1024, n_ctx=2048, tied=False, arch="qwen3moe",
                           n_expert=4, n_expert_used=2, n_ff_exp=256),
    # Qwen/Qwen3-30B-A3B: 48 layers, hidden 2048, 32 heads of 128, 4 KV heads, 128 experts of 768, 8 used.
    "qwen3-30b-a3b": SynthShape(48, 2048, 32, 4, 6144, 151936, n_ctx=40960, tied=False, rope_base=1000000.0,
                                arch="qwen3moe", head_dim_override=128, n_expert=128, n_expert_used=8,
                                n_ff_exp=768),
    # openai/gpt-oss-20b: 24 layers, hidden 2880, 64 heads of 64, 8 KV heads, 32 experts of 2880, 4 used,
    # sliding window 128 on every other layer, attention sinks, biases.
    "gpt-oss-20b": SynthShape(24, 2880, 64, 8, 2880, 201088, n_ctx=131072, tied=False, rope_base=150000.0,
                              arch="gpt-oss", head_dim_override=64, n_expert=32, n_expert_used=4,
                              n_ff_exp=2880, sliding_window=128),
    # mistralai/Mixtral-8x7B-v0.1: llama arch, 32 layers, hidden 4096, 32 heads, 8 KV heads, 8 experts
    # of 14336, 2 used.
    "mixtral-8x7b": SynthShape(32, 4096, 32, 8, 14336, 32000, n_ctx=32768, tied=False, rope_base=1000000.0,
                               n_expert=8, n_expert_used=2),
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers, hidden 2048, 16 heads, MLA (kv_lora_rank 512, no q LoRA,
    # qk_nope 128 + qk_rope 64, v_head 128), 64 routed experts of 1408 (6 used) + 2 shared, first block dense
    # (intermediate 10944).
    "deepseek-v2-lite": SynthShape(27, 2048, 16, 1, 10944, 102400, n_ctx=163840, tied=False, arch="deepseek2",
                                   n_expert=64, n_expert_used=6, n_ff_exp=1408, n_expert_shared=2,
                                   n_layer_dense_lead=1, kv_lora_rank=512, rope_dim=64, qk_nope_dim=128,
                                   v_head_dim=128),
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
    if shape.n_expert and not 0 < shape.n_expert_used <= shape.n_expert:
        raise GgprecError(f"n_expert_used must be between 1 and n_expert {shape.n_expert}, not {shape.n_expert_used}")
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
    """Tensor names and numpy shapes (outermost first; the last dimension is the row length) as
    llama.cpp's loader expects them for the shape's architecture (src/models/*.cpp load_arch_tensors)."""
    e = shape.n_embd
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (shape.n_vocab, e))]
    for i in range(shape.n_layer):
        out += [(f"blk.{i}.{name}", dims) for name, dims in _block(shape, i)]
    out.append(("output_norm.weight", (e,)))
    if not shape.tied:
        out.append(("output.weight", (shape.n_vocab, e)))
    return out


def _block(shape: SynthShape, i: int) -> list[tuple[str, tuple[int, ...]]]:
    """One block's tensors (names without `blk.N.`), numpy shapes."""
    e, hd, ff = shape.n_embd, shape.head_dim, shape.n_ff
    q, kv = shape.n_head * hd, shape.n_head_kv * hd
    out: list[tuple[str, tuple[int, ...]]] = [("attn_norm.weight", (e,))]
    if shape.arch == "deepseek2":
        k_mla = shape.qk_nope_dim + shape.rope_dim
        out += [
            ("attn_q.weight", (shape.n_head * k_mla, e)),
            ("attn_kv_a_mqa.weight", (shape.kv_lora_rank + shape.rope_dim, e)),
            ("attn_kv_a_norm.weight", (shape.kv_lora_rank,)),
            ("attn_k_b.weight", (shape.n_head, shape.kv_lora_rank, shape.qk_nope_dim)),
            ("attn_v_b.weight", (shape.n_head, shape.v_head_dim, shape.kv_lora_rank)),
            ("attn_output.weight", (e, shape.n_head * shape.v_head_dim)),
        ]
    else:
        out += [("attn_q.weight", (q, e)), ("attn_k.weight", (kv, e)), ("attn_v.weight", (kv, e)),
                ("attn_output.weight", (e, q))]
    if shape.arch == "qwen3moe":
        out += [("attn_q_norm.weight", (hd,)), ("attn_k_norm.weight", (hd,))]
    if shape.arch == "gpt-oss":
        out += [("post_attention_norm.weight", (e,)), ("attn_sinks.weight", (shape.n_head,)),
                ("attn_q.bias", (q,)), ("attn_k.bias", (kv,)), ("attn_v.bias", (kv,)),
                ("attn_output.bias", (e,))]
    else:
        out.append(("ffn_norm.weight", (e,)))
    if shape.n_expert == 0 or i < shape.n_layer_dense_lead:
        return out + [("ffn_gate.weight", (ff, e)), ("ffn_up.weight", (ff, e)), ("ffn_down.weight", (e, ff))]
    nx, fx = shape.n_expert, shape.n_ff if shape.arch == "llama" else shape.n_ff_exp  # llama: experts of n_ff
    out += [
        ("ffn_gate_inp.weight", (nx, e)),
        ("ffn_gate_exps.weight", (nx, fx, e)),
        ("ffn_up_exps.weight", (nx, fx, e)),
        ("ffn_down_exps.weight", (nx, e, fx)),
    ]
    if shape.arch == "gpt-oss":
        out += [("ffn_gate_inp.bias", (nx,)), ("ffn_gate_exps.bias", (nx, fx)), ("ffn_up_exps.bias", (nx, fx)),
                ("ffn_down_exps.bias", (nx, e))]
    if shape.n_expert_shared:
        fs = fx * shape.n_expert_shared
        out += [("ffn_gate_shexp.weight", (fs, e)), ("ffn_up_shexp.weight", (fs, e)),
                ("ffn_down_shexp.weight", (e, fs))]
    return out


def _stored_as_f32(name: str, tshape: tuple[int, ...]) -> bool:
    """Norms, biases and attention sinks stay f32, as llama.cpp's converters write them."""
    return len(tshape) == 1 or name.endswith(".bias")


def _add_arch_metadata(w, shape: SynthShape) -> None:  # w: gguf.GGUFWriter
    """Hyper-parameters beyond the llama set, with the keys llama.cpp reads for the architecture."""
    if shape.head_dim_override or shape.arch == "deepseek2":
        if shape.arch == "deepseek2":
            # MLA as llama.cpp's converter writes it: the cached K row is the latent + rope part, no V.
            w.add_key_length(shape.kv_lora_rank + shape.rope_dim)
            w.add_value_length(shape.kv_lora_rank)
            w.add_key_length_mla(shape.qk_nope_dim + shape.rope_dim)
            w.add_value_length_mla(shape.v_head_dim)
            w.add_kv_lora_rank(shape.kv_lora_rank)
            w.add_q_lora_rank(0)  # no query LoRA (V2-Lite); llama.cpp requires the key unless n_layer is 27
            w.add_leading_dense_block_count(shape.n_layer_dense_lead)
            w.add_expert_shared_count(shape.n_expert_shared)
            w.add_expert_weights_scale(1.0)
            w.add_expert_gating_func(gguf_gating_softmax())
        else:
            w.add_key_length(shape.head_dim)
            w.add_value_length(shape.head_dim)
    if shape.n_expert:
        w.add_expert_count(shape.n_expert)
        w.add_expert_used_count(shape.n_expert_used)
        if shape.arch != "llama":  # llama.cpp's llama arch sizes its experts by feed_forward_length
            w.add_expert_feed_forward_length(shape.n_ff_exp)
    if shape.sliding_window:
        w.add_sliding_window(shape.sliding_window)


def gguf_gating_softmax():  # -> gguf.ExpertGatingFuncType
    import gguf

    return gguf.ExpertGatingFuncType.SOFTMAX


def write_synth(
    path: str | os.PathLike[str],
    shape: SynthShape,
    dtype: str = "f16",
    seed: int = 0,
    sparse: bool = False,
    force: bool = False,
    name: str = "ggprec-synth",
    progress: Callable[[int, int], None] | None = None,
    type_of: Callable[[str], str] | None = None,
) -> Path:
    """Write a synthetic GGUF of `shape`; returns the path. Weights ~ N(0, 0.02), norms 1. type_of (sparse
    files only): the ggml type each weight is stored as, by name (what a model hub's quantized file declares;
    nothing is quantized: the data is a hole)."""
    import gguf
    import numpy as np

    if dtype not in SYNTH_TYPES:
        raise GgprecError(f"synthetic weights are one of {', '.join(SYNTH_TYPES)}, not '{dtype}'")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    gtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
    elem_bytes = {"f32": 4, "f16": 2, "bf16": 2}[dtype]
    if type_of is not None and not sparse:
        raise GgprecError("stored types other than f32/f16/bf16 need a sparse file: nothing is quantized here")

    from .fileio import atomic_output  # here, not at the top: the CLI imports PRESETS for its --preset choices

    with atomic_output(path, force=force) as tmp:
        w = gguf.GGUFWriter(tmp, shape.arch)
        w.add_name(name)
        w.add_file_type(ftype)
        w.add_block_count(shape.n_layer)
        w.add_context_length(shape.n_ctx)
        w.add_embedding_length(shape.n_embd)
        w.add_feed_forward_length(shape.n_ff)
        w.add_head_count(shape.n_head)
        w.add_head_count_kv(shape.n_head_kv)
        w.add_rope_dimension_count(shape.rope_dim or shape.head_dim)
        w.add_rope_freq_base(shape.rope_base)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(shape.n_vocab)
        _add_arch_metadata(w, shape)
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
        sizes = []
        for tname, tshape in tensors:
            n = int(np.prod(tshape))
            if _stored_as_f32(tname, tshape):
                w.add_tensor_info(tname, tshape, np.dtype(np.float32), n * 4)
                sizes.append(n * 4)
            elif type_of is not None:
                from .ggml_types import lookup

                t = lookup(type_of(tname))
                n_bytes = t.tensor_bytes(tuple(reversed(tshape)))  # ggml order: the row first
                w.add_tensor_info(tname, tshape, np.dtype(np.float32), n_bytes,
                                  raw_dtype=gguf.GGMLQuantizationType(t.type_id))
                sizes.append(n_bytes)
            else:
                w.add_tensor_info(tname, tshape, np.dtype(np.float16 if dtype == "f16" else np.float32),
                                  n * elem_bytes, raw_dtype=gtype)
                sizes.append(n * elem_bytes)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if sparse:
            _leave_data_as_hole(w, sizes)
        else:
            for i, (tname, tshape) in enumerate(tensors):
                w.write_tensor_data(_weights(tshape, "f32" if _stored_as_f32(tname, tshape) else dtype, seed, i))
                if progress:
                    progress(i + 1, len(tensors))
        w.close()
    return Path(path)


def _weights(shape: tuple[int, ...], dtype: str, seed: int, index: int):  # -> np.ndarray
    import numpy as np

    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)  # norms of 1; biases and sinks of 1 are harmless too
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
