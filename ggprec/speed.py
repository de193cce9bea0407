"""Expected decode (tg) and prompt (pp) speed of a model on a machine.

Decoding one token reads every weight once (token_embd: one row) plus the KV cache in use, so its time
is close to a fixed cost plus bytes / bandwidth, summed over devices (layers run one after another):

    seconds per token = sum over devices d with reads of
        token_s[d] + layers[d] * layer_s[d] + rows[d] * row_s[d]
        + sum over types t of bytes[d][t] / (gbps[d][t] * 1e9)

The effective bandwidth depends on the type (dequantizing a K-quant costs more than reading q8_0), so it
is per (device, type); token_s / layer_s are the fixed costs (graph, thread barriers per op) and row_s a
fixed cost per weight row multiplied (a dot product's setup and final reduction), which together make
narrow models slower than their bytes say. Prompt processing is compute-bound: seconds per prompt token

    sum over types of weight elements / pp_elems_per_s[type] + layers * pp_layer_s + rows * pp_row_s
    + (weight bytes / gbps[type]) / tokens per ubatch + attention elements * pp_kv_s[KV type]

the bytes term because each ubatch streams the weights from memory once, so short prompts pay more per
token than long ones (llama-bench's pp512 is one ubatch of 512; `ggprec run` times its --pp the same way);
the attention term for what a quantized KV cache's flash-attention kernel adds over the f16 default (the
f16 cache's own attention is inside pp_layer_s and pp_row_s, fitted at n_kv 256: prompts much longer than
that, or a deep cache, are expected faster than they run).

Where the figures come from, per device, in this order (`load_speed_model`):
1. a bandwidth given explicitly (`--host-bandwidth`, `--gpu-bandwidth`: a plan for another machine); a
   GPU's figure is a spec figure, turned into per-type rates and fixed costs by `gpu_from_spec`;
2. the newest `ggprec calibrate` of THIS machine (hardware fingerprint + llama.cpp build), see calibrate;
3. an assumption, labelled: the host's bandwidth from a numpy copy, the GPU's a fixed figure.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import ggml_types
from .devices import GPU_CLASS, HOST_CLASS, device_class
from .gguf_info import ModelInfo
from .settings import RuntimeSettings

# Device classes of the model: every host buffer is HOST, every other device GPU (devices.device_class).
HOST, GPU = HOST_CLASS, GPU_CLASS
# Assumed when neither a flag nor a calibration gives the GPU's bandwidth: a mid-range discrete GPU (GB/s).
ASSUMED_GPU_GBPS = 500.0

Reads = Mapping[str, Mapping[str, int]]  # device -> type name -> bytes read per generated token
KV_PREFIX = "kv:"  # reads of the KV cache are keyed "kv:<type>" beside the weights' "<type>"
TG_PREFIX = 8  # tokens `ggprec run` decodes before its timed single-token decodes (llama-bench: a short prompt)
PP_TOKENS = 512  # the prompt length pp is expected at unless told (`ggprec run`'s and llama-bench's default)


def prompt_attention(info: ModelInfo, settings: RuntimeSettings, pp_tokens: int) -> float:
    """Attention elements per prompt token, all layers: each query head visits the K and V rows of the
    cells it attends to. With flash attention llama.cpp's CPU kernel skips masked cells, so a prompt into an
    empty cache visits (pp + 1) / 2 on average; without it the K*Q product spans every cell of the ubatch's
    view (n_kv: at least 256, padded to 256)."""
    hp = info.hparams
    cells = (pp_tokens + 1) / 2 if settings.flash_attn_effective else max(256, -(-pp_tokens // 256) * 256)
    return hp.n_layer * hp.n_head * (hp.head_dim_k + hp.head_dim_v) * cells


def ubatch_tokens(pp_tokens: int, settings: RuntimeSettings) -> float:
    """Tokens per ubatch, on average, when a prompt of `pp_tokens` is decoded: llama.cpp splits the batch
    (at most n_batch) into ubatches of n_ubatch, and each ubatch reads the weights once."""
    size = max(min(settings.n_ubatch, settings.n_batch), 1)
    return pp_tokens / max(-(-pp_tokens // size), 1) if pp_tokens > 0 else 1.0


def decode_cells(depth: int, tg: int) -> int:
    """KV cells in use, on average, over `tg` single-token decodes after `depth` cached tokens (at least the
    short prefix `ggprec run` uses): what each decoded token reads of the KV cache."""
    return max(depth, TG_PREFIX) + tg // 2


@dataclass(frozen=True)
class DeviceSpeed:
    """What one device class does per generated token (and per prompt token when calibrated)."""

    gbps: dict[str, float]  # type name -> effective GB/s while decoding
    default_gbps: float  # a type with no figure of its own (see SpeedModel._bandwidth)
    token_s: float = 0.0  # fixed seconds per token when this device takes part
    layer_s: float = 0.0  # fixed seconds per layer on this device per token
    pp_elems_per_s: dict[str, float] = field(default_factory=dict)  # type -> weight elements/s in pp
    pp_layer_s: float = 0.0  # fixed seconds per layer per prompt token (attention, norms, ...)
    source: str = ""
    row_s: float = 0.0  # fixed seconds per weight row a generated token multiplies (narrow rows pay it on few bytes)
    pp_row_s: float = 0.0  # the same per prompt token
    # Per weight type where calibrated (a repacked q4_0 row costs less than an f16 one); row_s / pp_row_s else.
    type_row_s: dict[str, float] = field(default_factory=dict)
    type_pp_row_s: dict[str, float] = field(default_factory=dict)
    # KV type -> extra seconds per attention element (prompt_attention) of a prompt token that a cache of that
    # type costs over the f16 default (its flash-attention kernel dequantizes every K and V row it visits).
    pp_kv_s: dict[str, float] = field(default_factory=dict)
    # KV type -> fixed seconds per layer per token that a cache of that type adds (a quantized cache's
    # attention kernel on a GPU: measured, see gpu_from_spec); KV bytes are charged at gbps["kv:<type>"].
    kv_layer_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"gbps": dict(self.gbps), "default_gbps": self.default_gbps, "token_s": self.token_s,
                "layer_s": self.layer_s, "pp_elems_per_s": dict(self.pp_elems_per_s),
                "pp_layer_s": self.pp_layer_s, "source": self.source, "kv_layer_s": dict(self.kv_layer_s),
                "row_s": self.row_s, "pp_row_s": self.pp_row_s, "pp_kv_s": dict(self.pp_kv_s),
                "type_row_s": dict(self.type_row_s), "type_pp_row_s": dict(self.type_pp_row_s)}

    def row_cost(self, type_name: str, prompt: bool = False) -> float:
        """Seconds per row of `type_name`: its own figure, the nearest calibrated type's, else the default."""
        per, default = (self.type_pp_row_s, self.pp_row_s) if prompt else (self.type_row_s, self.row_s)
        if type_name in per:
            return per[type_name]
        return _nearest(per, type_name) if per else default


@dataclass(frozen=True)
class SpeedEstimate:
    tg_tps: float
    pp_tps: float | None  # None where the model has no pp figure (flags, assumptions, a GPU uncalibrated)
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"tg_tps": self.tg_tps, "pp_tps": self.pp_tps, "source": self.source}


@dataclass(frozen=True)
class SpeedModel:
    devices: dict[str, DeviceSpeed]  # HOST and GPU
    n_threads: int | None = None  # threads the calibration ran with (None: not a calibration)
    # Several devices (see the section at the end): figures of a device of its own, by buffer name (an RPC
    # server's RPC0[host:port]); seconds per RPC hop per token (None: the measured data/rpc_speed.json).
    per_device: dict[str, DeviceSpeed] = field(default_factory=dict)
    hop_s: float | None = None
    # Filled lazily: (device class, type) -> GB/s, so tg_tps is dict lookups and arithmetic only.
    _bw_cache: dict[tuple[str, str], float] = field(default_factory=dict, repr=False, compare=False)

    def describe(self, devices: Sequence[str] | None = None) -> str:
        """One line: where each device's figures come from (of `devices` only, when given)."""
        return "; ".join(f"{'host' if d == HOST else 'GPU'}: {s.source}" for d, s in self.devices.items()
                         if devices is None or d in devices)

    def _bandwidth(self, dev: str, type_name: str) -> float:
        key = (dev, type_name)
        bw = self._bw_cache.get(key)
        if bw is None:
            bw = self._bw_cache[key] = _type_bandwidth(self.speed_of(dev), type_name)
        return bw

    def tg_tps(self, reads: Reads, layers: Mapping[str, int] | None = None,
               rows: Mapping[str, Mapping[str, float]] | None = None, hops: int = 0) -> float:
        """Expected decode tok/s for `reads` (device -> type -> bytes per token); `layers` (device ->
        blocks there) adds the per-layer fixed cost, `rows` (device -> type -> weight rows multiplied per
        token, matmul_work) the per-row one, `hops` the RPC hops a token makes (rpc_hops). Devices are named
        as in memory's buffers (CPU, CPU_Mapped, CUDA0, RPC0[host:port], ...) or by class."""
        seconds = hops * self.hop_seconds()
        seconds += sum(n * self.speed_of(self.speed_key(d)).row_cost(t) for d, by_type in (rows or {}).items()
                       for t, n in by_type.items())
        charged: set[str] = set()
        kv_types: dict[str, set[str]] = {}  # device class -> KV types read there
        for device, by_type in reads.items():
            dev = self.speed_key(device)
            for type_name, n in by_type.items():
                if n:
                    seconds += n / (self._bandwidth(dev, type_name) * 1e9)
                    if type_name.startswith(KV_PREFIX):
                        kv_types.setdefault(dev, set()).add(type_name[len(KV_PREFIX):])
            if dev not in charged:
                charged.add(dev)
                seconds += self.speed_of(dev).token_s
        for device, n_layers in (layers or {}).items():
            dev = self.speed_key(device)
            spd = self.speed_of(dev)
            seconds += n_layers * (spd.layer_s + max((spd.kv_layer_s.get(t, 0.0)
                                                      for t in kv_types.get(dev, ())), default=0.0))
        return 1.0 / seconds if seconds > 0 else float("inf")

    def pp_tps(self, elems: Mapping[str, Mapping[str, int]], layers: Mapping[str, int] | None = None,
               rows: Mapping[str, Mapping[str, float]] | None = None, stream: Reads | None = None,
               ubatch_tokens: float = 1.0, attention: Mapping[str, float] | None = None,
               kv_types: Sequence[str] = ()) -> float | None:
        """Expected prompt tok/s for `elems` (device -> type -> weight elements multiplied per token),
        `layers` (device -> blocks there), `rows` (device -> type -> weight rows multiplied per token) and `stream`
        (device -> type -> weight bytes each ubatch reads once) over ubatches of `ubatch_tokens` tokens on
        average, and `attention` (device -> prompt_attention elements per token) over a cache of `kv_types`
        (K, V); None when a device taking part has no pp figures."""
        seconds = 0.0
        for device, n in (attention or {}).items():
            per = self.devices[device_class(device)].pp_kv_s
            seconds += n * max((per.get(t, 0.0) for t in kv_types), default=0.0)
        for device, by_type in elems.items():
            dev = device_class(device)
            spd = self.devices[dev]
            if not spd.pp_elems_per_s:
                return None
            for type_name, n in by_type.items():
                rate = spd.pp_elems_per_s.get(type_name) or _nearest(spd.pp_elems_per_s, type_name)
                seconds += n / rate
        for device, n_layers in (layers or {}).items():
            seconds += n_layers * self.devices[device_class(device)].pp_layer_s
        for device, by_type in (rows or {}).items():
            spd = self.devices[device_class(device)]
            seconds += sum(n * spd.row_cost(t, prompt=True) for t, n in by_type.items())
        for device, by_type in (stream or {}).items():
            dev = device_class(device)
            seconds += sum(n / (self._bandwidth(dev, t) * 1e9) for t, n in by_type.items() if n) / ubatch_tokens
        return 1.0 / seconds if seconds > 0 else None

    def expected(self, info: ModelInfo, settings: RuntimeSettings,
                 tensor_types: Mapping[str, ggml_types.GgmlType] | None = None,
                 kv_cells: int | None = None, pp_tokens: int = PP_TOKENS,
                 devices: Sequence[Any] | None = None) -> SpeedEstimate:
        """Expected tg (and pp) tok/s of `info` (with `tensor_types`, the types of the file that will run)
        under `settings`; `kv_cells`: KV cells in use while decoding (None: the whole n_ctx); `pp_tokens`:
        the prompt's length (decoded in ubatches of settings.n_ubatch); `devices`: the
        layer_split.OffloadDevices of a split (RPC servers, GPUs): see expected_split."""
        if devices:
            return expected_split(self, info, settings, devices, tensor_types, kv_cells)
        reads = bytes_read_per_token(info, settings, tensor_types, kv_cells)
        first_gpu = _first_gpu_layer(settings.n_gpu_layers, info.hparams.n_layer)
        layers = {HOST: first_gpu, GPU: info.hparams.n_layer - first_gpu}
        source = self.describe([device_class(d) for d, by_type in reads.items() if any(by_type.values())])
        threads = settings.n_threads
        if self.n_threads is not None and threads is not None and threads != self.n_threads:
            source += f" (calibrated with {self.n_threads} threads, this runs {threads})"
        prompt = matmul_work(info, settings, tensor_types, prompt=True)
        per_layer = prompt_attention(info, settings, pp_tokens) / max(info.hparams.n_layer, 1)
        pp = self.pp_tps(prompt.elements, {d: n for d, n in layers.items() if n}, prompt.rows, prompt.bytes,
                         ubatch_tokens(pp_tokens, settings), {d: n * per_layer for d, n in layers.items() if n},
                         (settings.cache_type_k, settings.cache_type_v))
        tg = self.tg_tps(reads, layers, matmul_work(info, settings, tensor_types).rows)
        return SpeedEstimate(tg, pp, source)

    # -- several devices: each device's own figures and the RPC hops (module section at the end) --

    def speed_key(self, device: str) -> str:
        """Whose figures a device is charged at: its own (per_device, or an RPC device's, which are this
        host's unless given), else its class's."""
        return device if device in self.per_device or is_rpc(device) else device_class(device)

    def speed_of(self, key: str) -> DeviceSpeed:
        """The figures of a speed_key."""
        if key in self.devices:
            return self.devices[key]
        spd = self.per_device.get(key)
        if spd is None:
            spd = self.per_device[key] = as_this_host(self.devices[HOST])  # cached: the dict is the model's own
        return spd

    def hop_seconds(self) -> float:
        return rpc_facts()["hop_ms"] / 1000 if self.hop_s is None else self.hop_s

    def with_devices(self, bandwidths: Mapping[str, float]) -> SpeedModel:
        """This model with a flat bandwidth (GB/s) of their own for some devices (buffer names)."""
        given = {d: flat(gbps, f"{gbps:g} GB/s given") for d, gbps in bandwidths.items()}
        return SpeedModel(self.devices, self.n_threads, {**self.per_device, **given}, self.hop_s)

    def describe_split(self, devices: Sequence[str]) -> str:
        """describe() of the device classes taking part, each RPC device's source and the hop cost's."""
        by_source: dict[str, list[str]] = {}  # devices sharing figures are named together
        for k in dict.fromkeys(self.speed_key(d) for d in devices):
            by_source.setdefault(self.speed_of(k).source, []).append("host" if k == HOST else "GPU" if k == GPU else k)
        parts = [f"{', '.join(names)}: {source}" for source, names in by_source.items()]
        if any(is_rpc(d) for d in devices):
            hop = (f"{self.hop_s * 1000:.2f} ms given" if self.hop_s is not None
                   else f"{rpc_facts()['hop_ms']:.2f} ms measured on loopback (data/rpc_speed.json; a real network "
                        "adds its round trip)")
            parts.append(f"each RPC hop {hop}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"devices": {d: s.to_dict() for d, s in self.devices.items()}, "n_threads": self.n_threads,
                "source": self.describe()}


def _type_bandwidth(spd: DeviceSpeed, type_name: str) -> float:
    if type_name.startswith(KV_PREFIX):  # the cache's own figure, else what weights of its type get
        return spd.gbps.get(type_name) or _type_bandwidth(spd, type_name[len(KV_PREFIX):])
    weights = {t: v for t, v in spd.gbps.items() if not t.startswith(KV_PREFIX)}
    return spd.gbps.get(type_name) or _nearest(weights, type_name) or spd.default_gbps


def _nearest(figures: Mapping[str, float], type_name: str) -> float:
    """The figure of the calibrated type closest in bits per weight (same family first: K-quants, legacy
    quants, floats), for a type that was not calibrated; 0.0 when there are none."""
    if not figures:
        return 0.0
    try:
        want = ggml_types.lookup(type_name)
    except ggml_types.UnknownTypeError:
        return sum(figures.values()) / len(figures)

    def family(t: ggml_types.GgmlType) -> str:
        return "k" if t.name.endswith("_k") else "iq" if t.name.startswith("iq") else "q" if t.quantized else "f"

    def distance(name: str) -> tuple[int, float]:
        t = ggml_types.lookup(name)
        return (family(t) != family(want), abs(t.bits_per_weight - want.bits_per_weight))

    return figures[min(figures, key=distance)]


# --- what one token reads and multiplies ------------------------------------------------------------


def _first_gpu_layer(n_gpu_layers: int, n_layer: int) -> int:
    from .tensor_overrides import gpu_layers

    return gpu_layers(n_gpu_layers, n_layer)[0]


def bytes_read_per_token(info: ModelInfo, settings: RuntimeSettings,
                         tensor_types: Mapping[str, ggml_types.GgmlType] | None = None,
                         kv_cells: int | None = None) -> dict[str, dict[str, int]]:
    """Device -> type name -> bytes one generated token reads: the weights as memory.bytes_read_per_token
    places and counts them (token_embd one row, a tied head whole, routed experts their used share), plus
    the K and V rows of `kv_cells` cells (None: n_ctx) on each layer's device, keyed "kv:<type>"."""
    from .devices import GPU as GPU_DEVICE
    from .memory import bytes_read_per_token as weight_reads
    from .memory import kv_row_bytes

    reads = weight_reads(info, settings, tensor_types)
    cells = settings.n_ctx if kv_cells is None else kv_cells
    tk, tv, rows = kv_row_bytes(info, settings)
    first_gpu = _first_gpu_layer(settings.n_gpu_layers, info.hparams.n_layer)
    for il, (k, v) in enumerate(rows):
        by_type = reads.setdefault(GPU_DEVICE if il >= first_gpu else HOST, {})
        for t, n in ((tk, k * cells), (tv, v * cells)):
            if n:
                key = KV_PREFIX + t.name
                by_type[key] = by_type.get(key, 0) + n
    return reads


@dataclass
class MatmulWork:
    """What the weight matrices cost one token, per device: elements multiplied (by type), rows (each a
    dot product per token) and the matrices' bytes (by type)."""

    elements: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, device: str, gtype: ggml_types.GgmlType, shape: Sequence[int], share: float = 1.0,
            multiplied: bool = True) -> None:
        """One matrix: its bytes, and unless `multiplied` is False (read but multiplied for one token of
        the batch only) its elements and rows."""
        by_type = self.bytes.setdefault(device, {})
        by_type[gtype.name] = by_type.get(gtype.name, 0) + gtype.tensor_bytes(shape)
        if not multiplied:
            return
        n = 1
        for d in shape:
            n *= d
        elems = self.elements.setdefault(device, {})
        elems[gtype.name] = elems.get(gtype.name, 0) + round(n * share)
        rows = self.rows.setdefault(device, {})
        rows[gtype.name] = rows.get(gtype.name, 0.0) + n // shape[0] * share  # ggml shape: row length first


def matmul_work(info: ModelInfo, settings: RuntimeSettings,
                tensor_types: Mapping[str, ggml_types.GgmlType] | None = None, prompt: bool = False) -> MatmulWork:
    """The weight matrices one token multiplies, on the devices placement puts them: every matrix but
    token_embd (a row lookup), routed experts their used share (elements and rows; bytes whole: a prompt's
    ubatch touches them all), and the output head (a tied head: token_embd's matrix again; a split head
    the quantizer writes). A prompt token (`prompt`) multiplies neither the head nor the last block's FFN:
    llama.cpp keeps only the output rows (the last token's) after the last block's attention
    (`inp_out_ids`), so in a 2-layer model half the FFN work is not done per prompt token."""
    from .roles import is_routed_expert
    from .tensor_overrides import Placer

    hp = info.hparams
    placer = Placer.for_model(hp.n_layer, settings)
    work = MatmulWork()
    for t in info.tensors:
        if t.name == "token_embd.weight" or len(t.shape) < 2 or (t.name == "output.weight" and prompt):
            continue
        gtype = tensor_types.get(t.name, t.type) if tensor_types else t.type
        once = prompt and t.layer == hp.n_layer - 1 and t.role.startswith("ffn")
        work.add(placer.device(t.name, t.layer), gtype, t.shape, hp.expert_share if is_routed_expert(t.role) else 1.0,
                 multiplied=not once)
    embd = info.tensor("token_embd.weight")
    if not prompt and embd is not None and info.tensor("output.weight") is None:
        split = tensor_types.get("output.weight") if tensor_types else None
        if split is not None:
            work.add(placer.device("output.weight", None), split, embd.shape)
        elif info.tied_output:
            gtype = tensor_types.get(embd.name, embd.type) if tensor_types else embd.type
            work.add(placer.device(embd.name, None, output_copy=True), gtype, embd.shape)
    return work


def matmul_elements(info: ModelInfo, settings: RuntimeSettings,
                    tensor_types: Mapping[str, ggml_types.GgmlType] | None = None) -> dict[str, dict[str, int]]:
    """Device -> type -> weight elements multiplied per prompt token: matrices only (token_embd is a lookup,
    norms are element-wise), routed experts their used share, neither the output head nor the last block's
    FFN (they run for the last prompt token only)."""
    return matmul_work(info, settings, tensor_types, prompt=True).elements


# --- building a model: flags > this machine's calibration > assumptions ------------------------------


@functools.lru_cache(maxsize=1)
def measure_host_gbps(n_bytes: int = 64 * 2**20, reps: int = 5) -> float:
    """Host memory bandwidth in GB/s from the best of a few numpy copies (a copy reads and writes each byte)."""
    import numpy as np

    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


@functools.lru_cache(maxsize=1)
def _gpu_facts() -> dict[str, Any]:
    import json
    from importlib import resources

    return json.loads(resources.files("ggprec").joinpath("data/gpu_speed.json").read_text())


def gpu_from_spec(gbps: float) -> DeviceSpeed:
    """A GPU known only by a bandwidth figure (a spec sheet's), with the efficiencies measured on an H100
    scaled to it (ggprec/data/gpu_speed.json). A spec bandwidth is not what decode reaches: on the H100,
    tg reached 83% of the bandwidth ceiling at F16, 60% at Q8_0 and 45% at Q4_0, because a fixed cost per
    layer (kernel launches, the host-side loop) weighs more the smaller the weights, and dequantizing costs.

    The fit, one unknown per measurement: F16 weights are read at the given figure (assumed: an F16 GEMV
    streams at the card's bandwidth; torch copies reached 3.03-3.11 TB/s against the 3.0 TB/s figure), which
    leaves the per-layer fixed cost; each other weight type's efficiency follows from its tg. The KV cache:
    each type's read rate from tg at depth 16384 against a short prompt, and a quantized cache's extra fixed
    cost per layer from tg at the short depth (it made the H100 9-19% slower, so on a GPU a quantized cache
    frees memory and costs speed). Efficiencies are fractions of the given figure; the fixed costs are kept
    in seconds (launch- and host-bound, not bandwidth-bound)."""
    from .units import MIB

    facts = _gpu_facts()
    ref, n_layer, row_elems = facts["given_gbps"] * 1e9, facts["n_layer"], facts["kv_row_elements"]

    def kv_bytes(type_name: str, cells: float) -> float:  # K and V rows of every layer
        return 2 * n_layer * cells * ggml_types.lookup(type_name).row_bytes(row_elems)

    short = facts["short_depth"]
    kv_eff: dict[str, float] = {}
    for row in facts["kv"]:
        extra_s = 1 / row["tg_deep"] - 1 / row["tg_short"]
        kv_eff[row["type"]] = (kv_bytes(row["type"], row["depth"] + short) - kv_bytes(row["type"], short)) / (
            ref * extra_s)
    kv_f16_short_s = kv_bytes("f16", short) / (kv_eff["f16"] * ref)
    base_short = next(1 / r["tg_short"] for r in facts["kv"] if r["type"] == "f16")
    kv_layer_s = {r["type"]: max((1 / r["tg_short"] - base_short
                                  - (kv_bytes(r["type"], short) / (kv_eff[r["type"]] * ref) - kv_f16_short_s))
                                 / n_layer, 0.0)
                  for r in facts["kv"] if r["type"] != "f16"}
    f16 = next(r for r in facts["weights"] if r["type"] == "f16")
    layer_s = (1 / f16["tg_tps"] - f16["cuda0_mib"] * MIB / ref - kv_f16_short_s) / n_layer
    eff = {r["type"]: r["cuda0_mib"] * MIB / (ref * (1 / r["tg_tps"] - n_layer * layer_s - kv_f16_short_s))
           for r in facts["weights"]}
    speeds = {t: e * gbps for t, e in eff.items()} | {KV_PREFIX + t: e * gbps for t, e in kv_eff.items()}
    return DeviceSpeed(gbps=speeds, default_gbps=eff["q8_0"] * gbps, layer_s=layer_s, kv_layer_s=kv_layer_s,
                       source=f"{gbps:g} GB/s given, per-type efficiency and fixed costs measured on an H100 "
                              f"(F16 {eff['f16']:.0%}, Q8_0 {eff['q8_0']:.0%}, Q4_0 {eff['q4_0']:.0%} of it; "
                              f"{layer_s * 1e6:.0f} us per layer)")


def flat(gbps: float, source: str) -> DeviceSpeed:
    """One bandwidth for every type, no fixed costs, no pp figures (a given or assumed figure)."""
    return DeviceSpeed(gbps={}, default_gbps=gbps, source=source)


def load_speed_model(host_gbps: float | None = None, gpu_gbps: float | None = None,
                     calibration: Any = None) -> SpeedModel:
    """The speed model for a plan: per device, a given bandwidth, else `calibration`'s figures (a
    `calibrate.Calibration`; the measure stack finds this machine's: `calibrate.speed_model_for`), else a
    labelled assumption. Runs nothing but a numpy copy for an assumed host bandwidth."""
    from .errors import GgprecError

    for name, v in (("host", host_gbps), ("GPU", gpu_gbps)):
        if v is not None and not v > 0:
            raise GgprecError(f"the {name} bandwidth must be a positive number of GB/s, not {v}")
    devices: dict[str, DeviceSpeed] = {}
    calibrated = calibration.speeds if calibration is not None else {}
    for dev, given in ((HOST, host_gbps), (GPU, gpu_gbps)):
        if given is not None:
            devices[dev] = gpu_from_spec(given) if dev == GPU else flat(given, f"{given:g} GB/s given")
        elif dev in calibrated:
            devices[dev] = calibrated[dev]
        elif dev == HOST:
            devices[dev] = flat(measure_host_gbps(), f"{measure_host_gbps():.1f} GB/s assumed "
                                "(numpy copy; run `ggprec calibrate` to measure llama.cpp)")
        else:
            devices[dev] = flat(ASSUMED_GPU_GBPS, f"{ASSUMED_GPU_GBPS:g} GB/s assumed (give --gpu-bandwidth)")
    threads = calibration.n_threads if calibration is not None and host_gbps is None else None
    return SpeedModel(devices, n_threads=threads)


# --- several devices: each device's own rate and the RPC hops (issue 18) ------------------------------
# A split model decodes layer by layer across its devices: each device reads its own bytes at its own rate
# (an RPC server's: given with --rpc-bandwidth, else assumed to be this host's), and every run of layers
# on an RPC server costs a round trip per token (inputs sent, graph computed, outputs fetched): the hop,
# measured on loopback by scripts/bench_rpc.py --write (ggprec/data/rpc_speed.json).


def is_rpc(device: str) -> bool:
    """An RPC server's device (buffer RPC0[host:port] or registry name RPC0)."""
    return device.startswith("RPC")


def as_this_host(host: DeviceSpeed) -> DeviceSpeed:
    """An RPC server's figures where none are given: this host's rates and per-layer costs, labelled; no
    per-token cost of its own (what a token costs to reach it is the hop's)."""
    from dataclasses import replace

    return replace(host, token_s=0.0, source=f"assumed the same as this host's (host: {host.source})")


@functools.lru_cache(maxsize=1)
def rpc_facts() -> dict[str, Any]:
    import json
    from importlib import resources

    return json.loads(resources.files("ggprec").joinpath("data/rpc_speed.json").read_text())


def rpc_hops(layer_devices: Sequence[str]) -> int:
    """RPC hops one token makes: the runs of consecutive layers (the output layer last) on RPC devices."""
    hops, previous = 0, None
    for device in layer_devices:
        if device != previous and is_rpc(device):
            hops += 1
        previous = device
    return hops


def split_reads(info: ModelInfo, settings: RuntimeSettings, devices: Sequence[Any],
                tensor_types: Mapping[str, ggml_types.GgmlType] | None = None,
                kv_cells: int | None = None) -> tuple[dict[str, dict[str, int]], list[str]]:
    """(device -> type -> bytes one token reads, the device of each layer 0..n_layer) of a split: the
    weights where memory places them, each layer's K and V rows on that layer's device."""
    from .layer_split import layer_devices
    from .memory import bytes_read_per_token as weight_reads

    hp = info.hparams
    layers = layer_devices(hp.n_layer, settings.n_gpu_layers, devices, settings.tensor_split)
    reads = weight_reads(info, settings, tensor_types, devices=devices)
    cells = settings.n_ctx if kv_cells is None else kv_cells
    tk, tv = ggml_types.kv_cache_type(settings.cache_type_k), ggml_types.kv_cache_type(settings.cache_type_v)
    for il in range(hp.n_layer):
        by_type = reads.setdefault(layers[il], {})
        for t, n in ((tk, tk.row_bytes(hp.n_head_kv[il] * hp.head_dim_k) * cells),
                     (tv, tv.row_bytes(hp.n_head_kv[il] * hp.head_dim_v) * cells)):
            by_type[KV_PREFIX + t.name] = by_type.get(KV_PREFIX + t.name, 0) + n
    return reads, layers


def expected_split(model: SpeedModel, info: ModelInfo, settings: RuntimeSettings, devices: Sequence[Any],
                   tensor_types: Mapping[str, ggml_types.GgmlType] | None = None,
                   kv_cells: int | None = None) -> SpeedEstimate:
    """Expected tg of a split: every device's reads at its rate, its layers' fixed and per-row costs, the hops. No pp
    figure (prompt batches overlap across devices in llama.cpp's pipeline: not modelled)."""
    reads, layers = split_reads(info, settings, devices, tensor_types, kv_cells)
    blocks: dict[str, int] = {}
    for device in layers[:-1]:
        blocks[device] = blocks.get(device, 0) + 1
    # The per-row costs, spread over the devices by their share of the blocks (matmul_work counts rows by
    # single-device placement; the split's rows follow its layers).
    rows_by_type: dict[str, float] = {}
    for by_type in matmul_work(info, settings, tensor_types).rows.values():
        for t, n in by_type.items():
            rows_by_type[t] = rows_by_type.get(t, 0.0) + n
    n_blocks = sum(blocks.values()) or 1
    rows = {d: {t: n * k / n_blocks for t, n in rows_by_type.items()} for d, k in blocks.items()}
    tg = model.tg_tps(reads, blocks, rows, hops=rpc_hops(layers))
    return SpeedEstimate(tg, None, model.describe_split([d for d, by in reads.items() if any(by.values())]))
