"""Predicted allocation: the bytes of every buffer llama.cpp allocates for a model and runtime settings.

The keys are those of `ggprec.alloc.Allocation.buffers` (`kind:device`), so a prediction can be set
beside what llama.cpp reports. The rules follow llama.cpp (vendored in llama-cpp-python 0.3.36):

- weights: the last `n_gpu_layers` of the n_layer + 1 layers go to the GPU, the output layer (output_norm
  and the head) first: -ngl 1 offloads the head only, -ngl n_layer all blocks but block 0
  (layer_split.offloaded_layers); token_embd always stays in host memory (a row lookup). A tied head offloaded
  to the GPU is a copy of token_embd there. Host weights are one mmap'd range per file (`CPU_Mapped`:
  from the first to the last host tensor in file order, padding included; a split model maps each shard
  on its own; a file the quantizer writes orders its tensors by name, then by layer), except matmul
  weights the CPU backend moves into its extra buffer types (`AMX`, `CPU_REPACK`: which types, shapes
  and sizes is `ggprec.cpu_buffers`), which get their own copy (a tied head of such a type too:
  token_embd stays mapped for the lookup, its copy is moved).
- KV cache: n_ctx padded to 256 cells x per layer (K row of n_head_kv*head_dim_k elements in the K
  type + the same for V); on the GPU for offloaded layers.
- compute: the scheduler's buffer is the peak of ggml-alloc over the reserved graph. It is predicted as
  the larger of two peaks, fitted on llama.cpp's reports (scripts/check_memory_model.py):
  attention (without flash attention: KQ scores f32 n_kv x n_ubatch x n_head + the f32 mask + 5
  activations of n_embd and 2 of n_embd_kv; with it: the f16 mask + 12 activations) and output (the
  logits f32 n_vocab x n_ubatch + 2 activations, +1 with flash attention and a rotated (quantized) KV cache
  once the mask is one activation or more).
- output: the logits of one sequence (n_vocab f32) in host memory.
GPU buffers follow the same rules but could not be checked here (no GPU): see the README.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import ggml_types
from .cpu_buffers import HostBuffers, host_buffers
from .devices import CPU, GPU, GPU_HOST, Buffers
from .ggml_types import GgmlType
from .gguf_info import HParams, ModelInfo
from .layer_split import OffloadDevice, layer_devices
from .roles import is_routed_expert
from .settings import RuntimeSettings
from .tensor_overrides import Placer

KV_PAD = 256  # llama.cpp pads n_ctx to a multiple of 256 cells
F32, F16 = 4, 2
# Multipliers of one n_embd (or n_embd_kv) activation of n_ubatch tokens, fitted on llama.cpp's
# reported compute buffers (llama-3.2-1b, 8b, 70b and SmolLM2 shapes; see the module doc). With flash
# attention the attention block is the peak only where the vocabulary is small or the logits are on another
# device: 12 on SmolLM2 split over RPC devices (exact; the tiny dense shape measures 8, so it is over there,
# on the safe side), 8 on a mixture of experts (tiny-moe, beside its routed FFN's peak).
ATTN_EMBD, ATTN_EMBD_KV, ATTN_EMBD_FA, OUT_EMBD = 5, 2, 12, 2
ATTN_EMBD_FA_MOE = 8
MOE_EMBD = 4  # activations beside the expert FFN's (mixtral-8x7b, flash attention: exact at ctx 4096)
N_COPIES = 4  # GGML_SCHED_MAX_COPIES: copies of each split input the scheduler keeps with pipeline parallelism


@dataclass
class MemoryPrediction(Buffers):
    explain: dict[str, str] = field(default_factory=dict)  # buffer key -> how its bytes were computed
    # Bytes of the mapped file range that inference never reads from the mapping: tensors lying inside the
    # range but offloaded to a device or copied into an extra CPU buffer (repacked). Their pages are read
    # once while loading and are then clean page cache the kernel drops under pressure: counted in
    # `model:CPU_Mapped` (llama.cpp reports the range) but not in what must stay resident.
    evictable: int = 0

    @property
    def resident_host(self) -> int:
        """Host bytes that must stay in RAM: every host buffer less the evictable part of the mapping."""
        return self.host_total - self.evictable

    def to_dict(self) -> dict[str, Any]:
        return {"buffers": dict(self.buffers), "explain": dict(self.explain), "host_total": self.host_total,
                "resident_host": self.resident_host, "evictable": self.evictable,
                "device_totals": self.device_totals(), "total": self.total}

    def _add(self, key: str, n: int, why: str) -> None:
        if n > 0:
            self.buffers[key] = self.buffers.get(key, 0) + n
            self.explain[key] = f"{self.explain[key]}; {why}" if key in self.explain else why


def predict(info: ModelInfo, settings: RuntimeSettings, tensor_types: Mapping[str, GgmlType] | None = None,
            mmap: bool = True, host: HostBuffers | None = None,
            devices: Sequence[OffloadDevice] | None = None) -> MemoryPrediction:
    """Bytes of every buffer llama.cpp allocates when it loads `info` with `settings`.

    tensor_types: the type of each tensor in the file that will be loaded (None: the file as it is); an
    `output.weight` the source lacks is a split head. mmap: llama.cpp's default load (host weights in a
    `CPU_Mapped` range) or load mode NONE (`CPU`, also what no_alloc simulates). host: the extra CPU
    buffer types in use (None: this machine's, see cpu_buffers). devices: the devices llama.cpp offloads
    to, in its order (RPC servers' and GPUs', see predict_split); None: the single-GPU rule."""
    for name in (settings.cache_type_k, settings.cache_type_v):
        ggml_types.kv_cache_type(name)  # an unknown KV type is a one-line GgprecError
    if devices is not None:
        return predict_split(info, settings, devices, tensor_types, mmap, host)
    pred = MemoryPrediction()
    hp = info.hparams
    placer = Placer.for_model(hp.n_layer, settings)
    first_gpu, output_on_gpu = placer.first_gpu, placer.output_on_gpu
    _weights(pred, info, tensor_types, placer, mmap, host_buffers() if host is None else host)
    n_kv = -(-settings.n_ctx // KV_PAD) * KV_PAD
    _kv(pred, info, settings, n_kv, [GPU if il >= first_gpu else CPU for il in range(hp.n_layer)])
    _compute(pred, info, settings, n_kv, first_gpu, output_on_gpu)
    # The logits go to the output layer's device's host buffer type (llama-context.cpp output_reserve).
    out_dev = GPU_HOST if output_on_gpu else "CPU"
    pred._add(f"output:{out_dev}", hp.n_vocab * F32, f"logits of one sequence: n_vocab {hp.n_vocab} x f32")
    return pred


def _weights(pred: MemoryPrediction, info: ModelInfo, tensor_types: Mapping[str, GgmlType] | None,
             placer: Placer, mmap: bool, host: HostBuffers) -> None:
    types = {t.name: t.type for t in info.tensors}
    if tensor_types:
        types.update(tensor_types)
    shapes = {t.name: t.shape for t in info.tensors}
    layer = {t.name: t.layer for t in info.tensors}
    # The file as it is: each shard of a split model is mapped separately (one range per shard).
    shard = {} if tensor_types else {t.name: t.shard for t in info.tensors}
    order = [t.name for shard_tensors in info.shard_tensors() for t in shard_tensors]
    if tensor_types:
        # A file llama.cpp's quantizer writes: tensors by name, then stably by layer (non-layer first).
        order = sorted(order + [n for n in ("output.weight",) if n in types and n not in shapes])
        order.sort(key=lambda n: -1 if layer.get(n) is None else layer[n])
    if "output.weight" not in shapes and "token_embd.weight" in shapes:
        shapes["output.weight"] = shapes["token_embd.weight"]
    align = info.alignment
    pos, host_n, host_bytes = 0, 0, 0
    devices: dict[str, list[int]] = {}  # non-host device -> [bytes, tensors]
    moved: dict[str, list[int]] = {}  # extra buffer type -> [bytes, tensors]
    host_range: dict[int, list[int]] = {}  # shard -> [start, end] of its host tensors
    for name in order:
        gtype, shape = types[name], shapes[name]
        n = gtype.tensor_bytes(shape)
        start, pos = pos, pos + n + (-(n) % align)
        device = placer.device(name, layer.get(name))
        if device != CPU:
            acc = devices.setdefault(device, [0, 0])
            acc[0], acc[1] = acc[0] + n, acc[1] + 1
            continue
        extra = host.buffer_for(gtype, shape) if name != "token_embd.weight" else None
        if extra:
            acc = moved.setdefault(extra[0], [0, 0])
            acc[0], acc[1] = acc[0] + extra[1], acc[1] + 1
            continue
        host_n, host_bytes = host_n + 1, host_bytes + n
        host_range.setdefault(shard.get(name, 0), [start, 0])[1] = start + n
    if info.tied_output and "output.weight" not in types:
        # llama.cpp loads a tied head as a duplicate of token_embd in the output layer's buffer: a copy
        # on the GPU when offloaded, a copy in an extra CPU buffer when its type moves there.
        embd_type, embd_shape = types["token_embd.weight"], shapes["token_embd.weight"]
        extra = host.buffer_for(embd_type, embd_shape)
        device = placer.device("token_embd.weight", None, output_copy=True)
        if device != CPU:
            acc = devices.setdefault(device, [0, 0])
            acc[0], acc[1] = acc[0] + embd_type.tensor_bytes(embd_shape), acc[1] + 1
        elif extra:
            acc = moved.setdefault(extra[0], [0, 0])
            acc[0], acc[1] = acc[0] + extra[1], acc[1] + 1
    if mmap and host_range:
        files = f" in {len(host_range)} shard files" if len(host_range) > 1 else ""
        span = sum(end - start for start, end in host_range.values())
        pred._add("model:CPU_Mapped", span,
                  f"mmap'd file range over {host_n} host tensors{files} (alignment padding included)")
        pred.evictable = max(span - host_bytes, 0)  # offloaded or repacked tensors inside the range, padding
    else:
        pred._add("model:CPU", host_bytes, f"{host_n} host tensors")
    for buft, (n_bytes, n_tensors) in moved.items():
        pred._add(f"model:{buft}", n_bytes, f"{n_tensors} host matmul weights in the CPU backend's {buft} buffer")
    for device, (n_bytes, n_tensors) in devices.items():
        pred._add(f"model:{device}", n_bytes, f"{n_tensors} tensors placed on {device} (offloaded layers, "
                  "output head, -ot overrides)")


def is_mla(info: ModelInfo) -> bool:
    """MLA (DeepSeek-2/3 converted with key_length_mla/value_length_mla): one latent K row of
    kv_lora_rank + rope dims (attention.key_length, n_head_kv 1) per cell and no V cache at all."""
    return info.hparams.head_dim_k_mla > 0 and info.hparams.head_dim_v_mla > 0


def kv_row_bytes(info: ModelInfo, settings: RuntimeSettings) -> tuple[GgmlType, GgmlType, list[tuple[int, int]]]:
    """(K type, V type, per layer (K bytes, V bytes) of one KV cell): what the cache holds per cell and
    what a decoded token reads per cell in use (the speed model). MLA: the latent K row, V 0."""
    hp = info.hparams
    tk = ggml_types.kv_cache_type(settings.cache_type_k)
    tv = ggml_types.kv_cache_type(settings.cache_type_v)
    mla = is_mla(info)
    rows = [(tk.row_bytes(heads * hp.head_dim_k), 0 if mla else tv.row_bytes(heads * hp.head_dim_v))
            for heads in hp.n_head_kv[:hp.n_layer]]
    return tk, tv, rows


def _kv(pred: MemoryPrediction, info: ModelInfo, settings: RuntimeSettings, n_kv: int,
        layers: Sequence[str]) -> None:
    """The KV rows of each layer on that layer's device `layers[il]` (llama.cpp's default offload_kqv)."""
    tk, tv, rows = kv_row_bytes(info, settings)
    mla = is_mla(info)
    per_dev: dict[str, list[int]] = {}
    for il, (k, v) in enumerate(rows):
        acc = per_dev.setdefault(layers[il], [0, 0])
        acc[0] += (k + v) * n_kv
        acc[1] += 1
    for dev, (n, count) in per_dev.items():
        pred._add(f"kv:{dev}", n, f"{n_kv} cells x {count} layers x K {tk.name}"
                  + (" (MLA latent, no V)" if mla else f" + V {tv.name}"))


def attn_rotation(info: ModelInfo, settings: RuntimeSettings) -> bool:
    """Whether llama.cpp rotates attention by a Hadamard matrix for this KV cache: a quantized K (or V) type
    with a head size that is a multiple of 64 (llama-kv-cache.cpp; LLAMA_ATTN_ROT_DISABLE turns it off)."""
    hp = info.hparams
    return any(ggml_types.lookup(t).quantized and dim % 64 == 0 and dim > 0
               for t, dim in ((settings.cache_type_k, hp.head_dim_k), (settings.cache_type_v, hp.head_dim_v)))


def _graph_peaks(info: ModelInfo, settings: RuntimeSettings, n_kv: int) -> tuple[int, str, int, str, int]:
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
    if fa:
        n_act = ATTN_EMBD_FA_MOE if hp.n_expert and hp.n_expert_used else ATTN_EMBD_FA
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
    rot_hole = fa and attn_rotation(info, settings) and n_kv >= 2 * hp.n_embd
    moe_model = bool(hp.n_expert and hp.n_expert_used)
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
    out = hp.n_vocab * n_ub * F32 + out_n * embd
    out_why = f"logits f32 {hp.n_vocab}x{n_ub} + {out_n} activations"
    if fa and moe_model and hp.sliding_window:
        out, out_why = _swa_moe_output(hp, n_kv, n_ub, masks, embd, attn_rotation(info, settings))
    mask_hole = fa and not moe_model and masks == 1 and _mask_above_ffn(hp, n_kv, attn_rotation(info, settings))
    if mask_hole:
        n_act = mask_hole
        out = hp.n_vocab * n_ub * F32 + n_act * embd + n_kv * n_ub * F16
        out_why = f"logits f32 {hp.n_vocab}x{n_ub} + {n_act} activations + f16 mask {n_kv}x{n_ub}"
    if hp.kv_lora_rank:
        # MLA: the query, its absorbed no-rope part and the concatenated query (n_head x (kv_lora_rank +
        # rope) wide) are the block's widest activations; fitted on deepseek-v2-lite's no_alloc reports
        # (exact at n_ubatch 512 and n_ctx >= 4096; see check_memory_model.py for the rest).
        mla = n_ub * F32 * hp.n_head * (hp.head_dim_k_mla + hp.kv_lora_rank + hp.head_dim_k)
        out = hp.n_vocab * n_ub * F32 + max(out_n * embd, mla)
        out_why = f"logits f32 {hp.n_vocab}x{n_ub} + MLA query activations"
        if fa and n_kv < 2 * hp.n_embd:
            # With flash attention and a mask narrower than an activation the query's activations sit in a
            # hole below the logits, which lie above 3 activations (deepseek-v2-lite, n_ubatch 256 and 512:
            # exact up to n_kv 3840, the MLA query from 4096 = 2 n_embd on).
            out = hp.n_vocab * n_ub * F32 + 3 * embd
            out_why = f"logits f32 {hp.n_vocab}x{n_ub} + 3 activations"
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


def _swa_moe_output(hp: HParams, n_kv: int, n_ub: int, masks: int, embd: int, rotated: bool) -> tuple[int, str]:
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
    logits = hp.n_vocab * n_ub * F32
    why = f"logits f32 {hp.n_vocab}x{n_ub}"
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


def _compute(pred: MemoryPrediction, info: ModelInfo, settings: RuntimeSettings, n_kv: int, first_gpu: int,
             output_on_gpu: bool) -> None:
    hp = info.hparams
    attn, attn_why, out, out_why, embd = _graph_peaks(info, settings, n_kv)
    n_ub, fa = embd // (hp.n_embd * F32), settings.flash_attn_effective
    has_gpu = first_gpu < hp.n_layer or output_on_gpu
    if not has_gpu:
        key, (n, why) = "compute:CPU", max((attn, attn_why), (out, out_why))
        pred._add(key, n, f"peak of the graph: {why}")
        return
    # GPU rules below are the same graph split by device; unverified without a GPU.
    gpu_peaks = [(attn, attn_why)] if first_gpu < hp.n_layer else []
    cpu_peaks = [(attn, attn_why)] if first_gpu > 0 else []
    (gpu_peaks if output_on_gpu else cpu_peaks).append((out, out_why))
    if gpu_peaks:
        n, why = max(gpu_peaks)
        pred._add(f"compute:{GPU}", n, f"peak of the offloaded graph: {why}")
    n, why = max(cpu_peaks, default=(embd, "token embeddings of one ubatch"))
    pred._add("compute:CPU", n, f"peak of the host graph: {why}")
    pred._add(f"compute:{GPU_HOST}", embd + n_kv * n_ub * (F16 if fa else F32),
              "graph inputs staged in pinned host memory (embeddings, mask)")


# --- several devices (RPC servers, GPUs): llama.cpp's layer split -------------------------------------

def predict_split(info: ModelInfo, settings: RuntimeSettings, devices: Sequence[OffloadDevice],
                  tensor_types: Mapping[str, GgmlType] | None = None, mmap: bool = True,
                  host: HostBuffers | None = None) -> MemoryPrediction:
    """predict() over several devices: each layer on the device layer_split assigns (-ngl, -ts), its
    weights (-ot on top) and its KV rows there; the output layer's device holds the logits' compute
    buffer. Keys are llama.cpp's buffer names (`model:RPC0[127.0.0.1:50052]`, `kv:CUDA0`...)."""
    hp = info.hparams
    layers = tuple(layer_devices(hp.n_layer, settings.n_gpu_layers, devices, settings.tensor_split))
    placer = Placer.for_model(hp.n_layer, settings, layers)
    pred = MemoryPrediction()
    _weights(pred, info, tensor_types, placer, mmap, host_buffers() if host is None else host)
    n_kv = -(-settings.n_ctx // KV_PAD) * KV_PAD
    _kv(pred, info, settings, n_kv, layers)
    # Which parts of the repeating layers each device computes: the attention core (KQ, softmax) runs
    # where the layer's KV cache is (its device), the projections and the FFN where their weights are,
    # so -ot can give a device a part without the rest ("proj": attention projections only).
    hosts: dict[str, set[str]] = {}
    for t in info.tensors:
        if t.layer is None or t.layer >= hp.n_layer:
            continue
        device = placer.device(t.name, t.layer)
        if t.role.startswith("attn"):
            hosts.setdefault(layers[t.layer], set()).add("attn")
            if device != layers[t.layer]:
                hosts.setdefault(device, set()).add("proj")
        elif t.role.startswith("ffn"):
            hosts.setdefault(device, set()).add("ffn")
    _compute_split(pred, info, settings, n_kv, layers, hosts, pipeline=_pipeline_parallel(info, settings, devices))
    # No offload device here has a host buffer type (RPC has none): the logits stay in plain CPU memory.
    pred._add("output:CPU", hp.n_vocab * F32, f"logits of one sequence: n_vocab {hp.n_vocab} x f32")
    return pred


def _pipeline_parallel(info: ModelInfo, settings: RuntimeSettings, devices: Sequence[OffloadDevice]) -> bool:
    """llama.cpp's condition (llama-context.cpp): several devices, every layer and the output offloaded,
    no tensor overrides; then the scheduler keeps several copies of each split's inputs."""
    from .settings import ALL_LAYERS
    from .tensor_overrides import override_list

    ngl = settings.n_gpu_layers
    return len(devices) > 1 and (ngl == ALL_LAYERS or ngl > info.hparams.n_layer) and not override_list(settings)


def _compute_split(pred: MemoryPrediction, info: ModelInfo, settings: RuntimeSettings, n_kv: int,
                   layers: Sequence[str], hosts: Mapping[str, set[str]], pipeline: bool) -> None:
    """One compute buffer per device. Fitted on SmolLM2 and Gemma 3 split over loopback RPC servers and
    the CPU (scripts/check_rpc_memory.py; context 256-2048, ubatch 256-512, flash attention on and off),
    in units of the graph's own sizes: E one n_embd activation, M the attention mask(s) of one ubatch,
    V the V-cache row indices of one ubatch (int64, one per element of the transposed V rows: only
    without flash attention; one set per KV cache, two with sliding windows).
    Without pipeline parallelism a device with repeating layers peaks at the attention graph (or the
    FFN, see _layer_peaks) less what the CPU graph keeps (E; with flash attention also the query), the
    output layer's device at the logits (less E, except without flash attention after repeating
    layers), a CPU without layers at its graph inputs (M + 2E + V). With pipeline parallelism the
    scheduler keeps N_COPIES copies of every split input alive (the GGML_SCHED_DEBUG split listing:
    embeddings or the previous device's output E, masks M, V indices V): a device with layers then peaks
    at the whole layer's graph plus N_COPIES - 1 copies of E + M + V, the CPU at its inputs plus as many
    copies, the output layer's device at the logits plus N_COPIES copies. hosts: device -> the parts of
    repeating layers ("attn", "ffn") whose weights it holds; a part peaks where it runs."""
    hp = info.hparams
    attn, attn_why, out, out_why, embd = _graph_peaks(info, settings, n_kv)
    fa = settings.flash_attn_effective
    n_ub = embd // (hp.n_embd * F32)
    caches = 2 if hp.sliding_window else 1
    mask = caches * n_kv * n_ub * (F16 if fa else F32)
    v_idx = 0 if fa else caches * n_ub * hp.n_head_kv_max * hp.head_dim_v * 8
    attn, ffn, ffn_why = _layer_peaks(info, attn, n_ub, embd, fa)
    extra = N_COPIES - 1 if pipeline else 0
    proj = 3 * embd + 2 * hp.n_head_kv_max * hp.head_dim_k * n_ub * F32 + mask
    output_device = layers[hp.n_layer]
    for device in dict.fromkeys([*layers, *hosts, CPU]):
        parts = hosts.get(device, set())
        has_layers = bool(parts)
        if device == CPU:
            if has_layers:
                n, why = max([(attn, attn_why)] * ("attn" in parts)
                             + [(proj, "attention projections")] * ("proj" in parts)
                             + [(ffn + (embd if "attn" in parts else 0), ffn_why)] * ("ffn" in parts))
            else:
                n = mask + 2 * embd + v_idx + extra * (mask + embd + v_idx)
                why = "graph inputs (mask, token embeddings)" + (f" x {N_COPIES} copies" if pipeline else "")
            if device == output_device:
                n, why = max((n, why), (out, out_why))
            pred._add("compute:CPU", n, f"peak of the host graph: {why}")
            continue
        peaks = []
        if has_layers:
            if pipeline:  # the inputs' copies stay allocated: the peak is the whole layer's, as on the CPU
                whole = max([attn] * ("attn" in parts) + [ffn + embd] * ("ffn" in parts) + [proj] * ("proj" in parts))
                peaks.append((whole + extra * (embd + mask + v_idx),
                              f"{attn_why}; {N_COPIES} copies of the split inputs"))
            else:
                q_act = hp.n_head * hp.head_dim_k * n_ub * F32  # with flash attention the query stays out too
                if "attn" in parts:
                    peaks.append((attn - embd - (q_act if fa else 0), f"{attn_why}, less what the CPU graph keeps"))
                if "ffn" in parts:
                    peaks.append((ffn, ffn_why))
                if "proj" in parts:
                    peaks.append((proj, "attention projections of layers whose KV cache is elsewhere"))
        if device == output_device:
            if pipeline:
                n = out - embd + N_COPIES * (embd + mask + v_idx)
                peaks.append((n, f"{out_why}; {N_COPIES} copies of the mask and split inputs"))
            else:
                peaks.append((out if has_layers and not fa else out - embd, out_why))
        if not peaks:  # every weight of its layers moved elsewhere by -ot: nothing is computed there
            continue
        n, why = max(peaks)
        pred._add(f"compute:{device}", n, f"peak of this device's graph: {why}")


def _layer_peaks(info: ModelInfo, attn: int, n_ub: int, embd: int, fa: bool) -> tuple[int, int, str]:
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


def bytes_read_per_token(info: ModelInfo, settings: RuntimeSettings,
                         tensor_types: Mapping[str, GgmlType] | None = None,
                         devices: Sequence[OffloadDevice] | None = None) -> dict[str, dict[str, int]]:
    """Device -> weight type name -> weight bytes one generated token reads, on average.

    Dense tensors are read whole; routed expert tensors (roles.ROUTED_EXPERT_ROLES) n_expert_used /
    n_expert of their bytes (the router picks that share per token; shared experts are dense here);
    token_embd one row (a lookup), except that a tied output head reads all of it again as the head.
    Devices are placement()'s, so -ot and n_cpu_moe move bytes between them; with `devices` (a split over
    RPC servers or GPUs) each layer's own device. Norms and biases count too (they are small). KV cache
    reads are not weights and are left to the caller."""
    hp = info.hparams
    split = tuple(layer_devices(hp.n_layer, settings.n_gpu_layers, devices, settings.tensor_split)) if devices else None
    placer = Placer.for_model(hp.n_layer, settings, split)
    share = hp.expert_share
    out: dict[str, dict[str, int]] = {}

    def add(device: str, type_name: str, n: float) -> None:
        per_type = out.setdefault(device, {})
        per_type[type_name] = per_type.get(type_name, 0) + round(n)

    for t in info.tensors:
        gtype = tensor_types.get(t.name, t.type) if tensor_types else t.type
        n = gtype.tensor_bytes(t.shape)
        device = placer.device(t.name, t.layer)
        if t.name == "token_embd.weight":
            add(device, gtype.name, gtype.row_bytes(t.shape[0]))  # ggml shape: row length first
            if info.tied_output and not (tensor_types and "output.weight" in tensor_types):
                add(placer.device(t.name, None, output_copy=True), gtype.name, n)
        elif is_routed_expert(t.role):
            add(device, gtype.name, n * share)
        else:
            add(device, gtype.name, n)
    if tensor_types and "output.weight" in tensor_types and info.tensor("output.weight") is None:
        embd = info.tensor("token_embd.weight")
        if embd is not None:  # a split head the quantizer writes from token_embd
            gtype = tensor_types["output.weight"]
            add(placer.device("output.weight", None), gtype.name, gtype.tensor_bytes(embd.shape))
    return out
