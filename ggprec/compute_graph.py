"""The compute buffer's two peaks: what ggml's graph allocator holds at the attention (or the routed FFN) and
at the logits of one ubatch, for llama.cpp's reserved graph.

llama.cpp sizes each device's compute buffer by running ggml-alloc over the worst-case graph; where the big
tensors land depends on the holes earlier ones leave, so the rules here are measured, not derived: counts of
one n_embd x n_ubatch f32 activation beside the masks, the KQ scores and the logits, each fitted on
llama.cpp's no_alloc reports (scripts/check_memory_model.py at three contexts, scripts/sweep_compute.py across
contexts) and named with the shapes it was fitted and checked on. `memory` places the peaks on devices.
"""

from __future__ import annotations

from . import ggml_types
from .gguf_info import HParams, ModelInfo
from .settings import RuntimeSettings

F32, F16 = 4, 2
# Multipliers of one n_embd (or n_embd_kv) activation of n_ubatch tokens, fitted on llama.cpp's
# reported compute buffers (llama-3.2-1b, 8b, 70b and SmolLM2 shapes; see the module doc). With flash
# attention the attention block is the peak only where the vocabulary is small or the logits are on another
# device: 12 on SmolLM2 split over RPC devices (exact; the tiny dense shape measures 8, so it is over there,
# on the safe side), 8 on a mixture of experts (tiny-moe, beside its routed FFN's peak).
ATTN_EMBD, ATTN_EMBD_KV, ATTN_EMBD_FA, OUT_EMBD = 5, 2, 12, 2
ATTN_EMBD_FA_MOE = 8
MOE_EMBD = 4  # activations beside the expert FFN's (mixtral-8x7b, flash attention: exact at ctx 4096)


def attn_rotation(info: ModelInfo, settings: RuntimeSettings) -> bool:
    """Whether llama.cpp rotates attention by a Hadamard matrix for this KV cache: a quantized K (or V) type
    with a head size that is a multiple of 64 (llama-kv-cache.cpp; LLAMA_ATTN_ROT_DISABLE turns it off)."""
    hp = info.hparams
    return any(ggml_types.lookup(t).quantized and dim % 64 == 0 and dim > 0
               for t, dim in ((settings.cache_type_k, hp.head_dim_k), (settings.cache_type_v, hp.head_dim_v)))


def graph_peaks(info: ModelInfo, settings: RuntimeSettings, n_kv: int) -> tuple[int, str, int, str, int]:
    """(attention peak, why, output peak, why, one activation of n_embd x n_ubatch f32): the two peaks
    of the reserved graph the compute buffers are predicted from."""
    hp = info.hparams
    # llama.cpp caps the batch at the context size (causal attention), before the KV cells' padding.
    n_ub = min(settings.n_ubatch, settings.n_batch, settings.n_ctx or n_kv, n_kv)
    embd = hp.n_embd * n_ub * F32
    embd_kv = hp.n_head_kv_max * hp.head_dim_k * n_ub * F32
    fa = settings.flash_attn_effective
    # Sliding-window models (gpt-oss, Gemma) keep two KV caches, each with its own attention mask.
    masks = 2 if hp.sliding_window else 1
    moe_model = bool(hp.n_expert and hp.n_expert_used)
    rotated = attn_rotation(info, settings)
    logits = hp.n_vocab * n_ub * F32
    if fa:
        n_act = ATTN_EMBD_FA_MOE if moe_model else ATTN_EMBD_FA
        attn = masks * n_kv * n_ub * F16 + n_act * embd
        attn_why = f"{masks} f16 mask {n_kv}x{n_ub} + {n_act} activations"
    else:
        attn = n_kv * n_ub * (hp.n_head + masks) * F32 + ATTN_EMBD * embd + ATTN_EMBD_KV * embd_kv
        attn_why = (f"KQ f32 {n_kv}x{n_ub}x{hp.n_head} heads + {masks} f32 mask + {ATTN_EMBD}+{ATTN_EMBD_KV} "
                    "activations")
    # A quantized KV cache makes llama.cpp rotate Q/K/V (and the attention output) by a Hadamard matrix
    # (llama-kv-cache.cpp's attn_rot_k/v), which adds small temporaries to every layer and moves where
    # ggml's allocator leaves its holes once the f16 mask (n_kv x n_ubatch) is at least one activation
    # (n_kv >= 2 n_embd). Measured: a dense model's output peak then holds one more activation (llama-3.2-1b,
    # 8b and 70b shapes; one exception seen: 8b at n_kv 24576, one less: on the safe side); a mixture of
    # experts' routed FFN one fewer and its output none more (tiny-moe, qwen3-30b-a3b, mixtral-8x7b).
    rot_hole = fa and rotated and n_kv >= 2 * hp.n_embd
    out_n = OUT_EMBD + (1 if rot_hole and not moe_model else 0)
    if moe_model:
        # The routed-expert FFN of one ubatch: gate, up and their product for each token's used experts
        # (f32, n_ff_exp x n_expert_used x n_ubatch each) beside the attention mask and MOE_EMBD activations;
        # fitted on mixtral-8x7b's no_alloc reports with flash attention (where it is the peak).
        n_ff_exp = hp.n_ff_exp or hp.n_ff_max
        moe_n = MOE_EMBD - (1 if rot_hole else 0)
        moe = 3 * n_ff_exp * hp.n_expert_used * n_ub * F32 + n_kv * n_ub * (F16 if fa else F32) + moe_n * embd
        if moe > attn:
            attn, attn_why = moe, f"3 expert activations f32 {n_ff_exp}x{hp.n_expert_used}x{n_ub} + mask + " \
                                  f"{moe_n} activations"
    logits_why = f"logits f32 {hp.n_vocab}x{n_ub}"
    out, out_why = logits + out_n * embd, f"{logits_why} + {out_n} activations"
    if fa and moe_model and hp.sliding_window:
        out, out_why = _swa_moe_output(hp, n_kv, n_ub, masks, embd, rotated, logits, logits_why)
    if fa and not moe_model and masks == 1 and (below := _mask_above_ffn(hp, n_kv, rotated)):
        out = logits + below * embd + n_kv * n_ub * F16
        out_why = f"{logits_why} + {below} activations + f16 mask {n_kv}x{n_ub}"
    if hp.kv_lora_rank:
        # MLA: the query, its absorbed no-rope part and the concatenated query (n_head x (kv_lora_rank +
        # rope) wide) are the block's widest activations; fitted on deepseek-v2-lite's no_alloc reports
        # (exact at n_ubatch 512 and n_ctx >= 4096; see check_memory_model.py for the rest).
        mla = n_ub * F32 * hp.n_head * (hp.head_dim_k_mla + hp.kv_lora_rank + hp.head_dim_k)
        if fa and n_kv < 2 * hp.n_embd:
            # With flash attention and a mask narrower than an activation the query's activations sit in a
            # hole below the logits, which lie above 3 activations (deepseek-v2-lite, n_ubatch 256 and 512:
            # exact up to n_kv 3840, the MLA query from 4096 = 2 n_embd on).
            out, out_why = logits + 3 * embd, f"{logits_why} + 3 activations"
        else:
            out, out_why = logits + max(out_n * embd, mla), f"{logits_why} + MLA query activations"
        if not fa:
            # Without flash attention the latent V (a view of the K cache) is copied transposed: an f16
            # n_kv x kv_lora_rank tensor whatever n_ubatch. ggml's allocator puts it where the query's
            # intermediates were (the query, its no-rope part and the absorbed no-rope part: n_head x
            # (2 key_length_mla + kv_lora_rank) f32 a token) when it fits there, and above the peak when not.
            # Measured with scripts/sweep_compute.py on deepseek-v2-lite at n_ubatch 256 and 512, n_ctx
            # 2048-65536: the switch falls exactly there (28 MiB fits at n_ubatch 512, 30 MiB does not).
            v_t = n_kv * hp.kv_lora_rank * F16
            hole = n_ub * F32 * hp.n_head * (2 * hp.head_dim_k_mla + hp.kv_lora_rank)
            attn += mla - ATTN_EMBD_KV * embd_kv + (v_t if v_t > hole else 0)
            attn_why += " + MLA query activations + " + ("transposed latent V f16" if v_t > hole else
                                                          "transposed latent V in the query's hole")
    return attn, attn_why, out, out_why, embd


def _mask_above_ffn(hp: HParams, n_kv: int, rotated: bool) -> int:
    """Activations below the logits when a dense model's f16 mask no longer fits the hole its FFN leaves
    (flash attention), else 0. With an FFN narrower than 3 n_embd (Llama 2, TinyLlama, SmolLM2: n_ff about
    2.7 n_embd) ggml's allocator keeps the mask below the logits too, over 4 activations while the mask
    (n_kv x n_ubatch f16, n_kv / 2 n_embd activations) is from n_ff / n_embd - 1 to 2 activations wide
    (2 (n_ff - n_embd) <= n_kv < 4 n_embd), and over 5 with a rotated (quantized) cache from
    n_ff / n_embd - 2 to 1 activation wide (2 (n_ff - 2 n_embd) <= n_kv < 2 n_embd).
    Measured with scripts/sweep_compute.py (n_ctx 256-10240 in steps of 256, f16 and q8_0 caches) on
    n_embd 2048 with n_ff 4864 and 5504 and n_embd 576 with n_ff 1440 and 1536, then checked on a Llama-2-7B
    shape (n_embd 4096, n_ff 11008): exact within 0.1 MiB; n_ff 6144 and up on n_embd 2048 show no such
    region. At n_ff <= 2 n_embd the allocator does other things (n_ff 3072 and 4096 on n_embd 2048: up to
    7.9% above the prediction), which no rule here covers."""
    if not 2 * hp.n_embd < hp.n_ff_max < 3 * hp.n_embd:
        return 0
    if rotated:
        return 5 if 2 * (hp.n_ff_max - 2 * hp.n_embd) <= n_kv < 2 * hp.n_embd else 0
    return 4 if 2 * (hp.n_ff_max - hp.n_embd) <= n_kv < 4 * hp.n_embd else 0


def _swa_moe_output(hp: HParams, n_kv: int, n_ub: int, masks: int, embd: int, rotated: bool, logits: int,
                    why: str) -> tuple[int, str]:
    """The output peak of a sliding-window mixture of experts (gpt-oss) with flash attention. ggml's allocator
    places the logits above 3 activations, or above the two f16 masks and some activations, by how wide the
    masks are against an activation (two masks are n_kv / n_embd activations):
      n_kv < n_embd: 3 activations + the masks; n_embd < n_kv < 2 n_embd: 6 activations + the masks;
      2.5 n_embd <= n_kv < 4 n_embd: 2 activations + the masks, unless the cache is rotated (quantized) and a
      mask is at least as wide as the query (n_kv >= 2 n_head head_dim); otherwise 3 activations.
    Measured with scripts/sweep_compute.py on the gpt-oss-20b shape (n_embd 2880, 64 heads of 64; gpt-oss-120b
    has the same widths) at n_ubatch 256 and 512, n_kv 512-32768 in steps of 512, f16 and q8_0 caches: exact
    within 0.1 MiB. A 4-layer variant of n_embd 2048 agrees but at n_kv 4608 (2.25 n_embd), where the masks
    already sit below the logits (1.2% above the prediction): the lower bound is fitted on one width."""
    mask = masks * n_kv * n_ub * F16
    if n_kv < hp.n_embd:
        n_act = 3
    elif hp.n_embd < n_kv < 2 * hp.n_embd:
        n_act = 6
    elif 5 * hp.n_embd <= 2 * n_kv < 8 * hp.n_embd and not (rotated and n_kv >= 2 * hp.n_head * hp.head_dim_k):
        n_act = 2
    else:
        return logits + 3 * embd, f"{why} + 3 activations"
    return logits + n_act * embd + mask, f"{why} + {n_act} activations + {masks} f16 masks {n_kv}x{n_ub}"


def layer_peaks(info: ModelInfo, attn: int, n_ub: int, embd: int, fa: bool) -> tuple[int, int, str]:
    """(attention peak, FFN peak without the token embeddings, why) of a repeating layer, for the split
    devices. Fitted on Gemma 3 split over loopback servers (context 256-2048): per-head q/k norms
    (attn_q_norm/attn_k_norm) keep a normalised q and k beside the attention activations; a GELU-gated
    FFN (the Gemma family) peaks at 4 n_ff activations + 2 n_embd ones without flash attention, which at
    short contexts exceeds the attention (with flash attention it did not show); a SiLU-gated one (fused
    in llama.cpp) never did in the models checked (3 n_ff)."""
    hp = info.hparams
    if info.tensor("blk.0.attn_q_norm.weight") is not None:
        attn += (hp.n_head * hp.head_dim_k + hp.n_head_kv_max * hp.head_dim_k) * n_ub * F32
    ffn_acts = 4 if info.arch.startswith("gemma") and not fa else 3
    ffn = ffn_acts * hp.n_ff_max * n_ub * F32 + 2 * embd
    return attn, ffn, f"FFN: {ffn_acts} activations of n_ff {hp.n_ff_max} x {n_ub} f32 + 2 of n_embd"
