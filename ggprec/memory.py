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
- compute: the scheduler's buffer is the peak of ggml-alloc over the reserved graph, predicted as the
  larger of two peaks (attention or the routed FFN, and the logits) measured rule by rule in
  `ggprec.compute_graph`; here they are placed on the devices that run each part of the graph.
- output: the logits of one sequence (n_vocab f32) in host memory.
GPU buffers follow the same rules but could not be checked here (no GPU): see the README.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import ggml_types
from .compute_graph import F16, F32, graph_peaks, layer_peaks
from .cpu_buffers import HostBuffers, host_buffers
from .devices import CPU, GPU, GPU_HOST, Buffers
from .ggml_types import GgmlType
from .gguf_info import ModelInfo
from .layer_split import OffloadDevice, layer_devices
from .roles import is_routed_expert
from .settings import RuntimeSettings
from .tensor_overrides import Placer

KV_PAD = 256  # llama.cpp pads n_ctx to a multiple of 256 cells
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


def _compute(pred: MemoryPrediction, info: ModelInfo, settings: RuntimeSettings, n_kv: int, first_gpu: int,
             output_on_gpu: bool) -> None:
    hp = info.hparams
    attn, attn_why, out, out_why, embd = graph_peaks(info, settings, n_kv)
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
    FFN, see compute_graph.layer_peaks) less what the CPU graph keeps (E; with flash attention also the query), the
    output layer's device at the logits (less E, except without flash attention after repeating
    layers), a CPU without layers at its graph inputs (M + 2E + V). With pipeline parallelism the
    scheduler keeps N_COPIES copies of every split input alive (the GGML_SCHED_DEBUG split listing:
    embeddings or the previous device's output E, masks M, V indices V): a device with layers then peaks
    at the whole layer's graph plus N_COPIES - 1 copies of E + M + V, the CPU at its inputs plus as many
    copies, the output layer's device at the logits plus N_COPIES copies. hosts: device -> the parts of
    repeating layers ("attn", "ffn") whose weights it holds; a part peaks where it runs."""
    hp = info.hparams
    attn, attn_why, out, out_why, embd = graph_peaks(info, settings, n_kv)
    fa = settings.flash_attn_effective
    n_ub = embd // (hp.n_embd * F32)
    caches = 2 if hp.sliding_window else 1
    mask = caches * n_kv * n_ub * (F16 if fa else F32)
    v_idx = 0 if fa else caches * n_ub * hp.n_head_kv_max * hp.head_dim_v * 8
    attn, ffn, ffn_why = layer_peaks(info, attn, n_ub, embd, fa)
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
