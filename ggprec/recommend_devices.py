"""A split that fits every device's budget: how many layers go to each device (-ngl and -ts) for given
tensor types and KV settings, checked buffer by buffer with `memory.predict`.

The search follows llama.cpp's own layout, which it cannot change: the host (CPU) keeps the first
n_layer + 1 - ngl layers, the devices take the rest in their order, and the last device that holds
layers also holds the output layer and its logits buffer. For each -ngl, from every layer offloaded
down to none, the devices are filled from the last backwards, each with as many layers as fit its
budget (a binary search over its layer count, each candidate predicted whole); the first -ngl whose
devices and host all fit is the answer, with -ts set to the layer counts (llama.cpp's cumulative rule
then gives exactly those counts). A CPU server reports its host's whole RAM as free, so a budget per
device is the user's (default: what the device reports free, less the margin).

This module chooses the split only; the types and the KV cache come from the caller (a profile or
`recommend`), which can call `fit_split` for each candidate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .device_plan import HOST, DevicePlan, plan_devices
from .errors import GgprecError
from .ggml_types import GgmlType
from .gguf_info import ModelInfo
from .layer_split import OffloadDevice, assign_layers
from .settings import RuntimeSettings
from .units import GIB, MIB

DEFAULT_MARGIN = 512 * MIB  # left free on every device (llama.cpp's --fit keeps 1024 MiB per GPU)


@dataclass
class SplitFit:
    n_gpu_layers: int
    counts: list[int]  # layers per device, in device order (the output layer counted on its device)
    settings: RuntimeSettings  # the input settings with n_gpu_layers and tensor_split set
    plan: DevicePlan
    budgets: dict[str, int]  # device buffer name (or HOST) -> bytes allowed


def parse_budgets(values: Sequence[str]) -> dict[str, float]:
    """`DEVICE=GIB` items (several comma-separated in one value): DEVICE is a registry name (RPC0,
    CUDA0), a buffer name, an RPC server's HOST:PORT (all its devices) or `host` (this machine's RAM)."""
    out: dict[str, float] = {}
    for value in values:
        for item in value.split(","):
            name, sep, gib = item.strip().rpartition("=")
            try:
                amount = float(gib)
            except ValueError:
                amount = -1.0
            if not sep or not name or not amount > 0 or amount == float("inf"):
                raise GgprecError(f"--budget {item!r}: expected DEVICE=GIB with GIB > 0, e.g. RPC0=24 or host=64")
            out[name] = amount
    return out


def resolve_budgets(devices: Sequence[OffloadDevice], given: Mapping[str, float], host_bytes: int | None,
                    margin: int = DEFAULT_MARGIN) -> dict[str, int]:
    """Bytes per device buffer name and HOST: the user's budget (GiB) where given, else the free memory
    the device reports, less the margin."""
    out: dict[str, int] = {}
    known = {"host"}
    for d in devices:
        endpoint = d.buffer[d.buffer.find("[") + 1:-1] if d.buffer.startswith("RPC") else None
        known |= {d.name, d.buffer} | ({endpoint} if endpoint else set())
        gib = given.get(d.name, given.get(d.buffer, given.get(endpoint) if endpoint else None))
        out[d.buffer] = int(gib * GIB) if gib is not None else max(d.free - margin, 0)
    unknown = [k for k in given if k not in known]
    if unknown:
        raise GgprecError(f"--budget {unknown[0]!r}: no such device; devices: "
                          + ", ".join([d.name for d in devices] + ["host"]))
    if "host" in given:
        out[HOST] = int(given["host"] * GIB)
    elif host_bytes is not None:
        out[HOST] = max(host_bytes - margin, 0)
    return out


# --- recommend's devices: RPC servers with a budget each, probed or declared ----------------------------

@dataclass(frozen=True)
class DeviceBudget:
    """One RPC server's device as recommend plans for it: the memory it may use, whether the server answered
    a probe (a declared server need not exist yet: a plan for hosts still to be bought), and the bandwidth
    given for it (GB/s; None: the speed model assumes this host's)."""

    device: OffloadDevice
    endpoint: str
    budget: int  # bytes
    probed: bool
    source: str  # where the budget comes from, in words
    gbps: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.device.name, "device": self.device.buffer, "endpoint": self.endpoint,
                "budget_bytes": self.budget, "probed": self.probed, "source": self.source,
                "reports_free_bytes": self.device.free if self.probed else None, "gbps": self.gbps}


def parse_rpc_budgets(values: Sequence[str]) -> list[tuple[str, float | None]]:
    """`--rpc HOST:PORT[=GIB],...` (recommend's form of llama.cpp's --rpc): each server once, in order, with
    the memory the user gives it (GiB; None: what it reports, once probed)."""
    from .rpc.wire import parse_servers

    out: list[tuple[str, float | None]] = []
    for value in values:
        for item in value.split(","):
            endpoint, sep, gib = item.strip().partition("=")
            if not endpoint:
                continue
            amount = None
            if sep:
                amount = _gib(gib)
                if amount is None:
                    raise GgprecError(f"--rpc {item.strip()!r}: expected HOST:PORT=GIB with GIB > 0, "
                                      "e.g. hostA:50052=32")
            out.append((parse_servers([endpoint])[0], amount))
    seen = [e for e, _ in out]
    twice = next((e for e in seen if seen.count(e) > 1), None)
    if twice:
        raise GgprecError(f"RPC server {twice} given twice")
    return out


def parse_bandwidths(values: Sequence[str], endpoints: Sequence[str]) -> dict[str, float]:
    """`--rpc-bandwidth [HOST:PORT=]GBPS` (several comma-separated): endpoint -> GB/s; a bare figure is
    every server's that has none of its own."""
    given: dict[str, float] = {}
    default = None
    for value in values:
        for item in value.split(","):
            endpoint, sep, figure = item.strip().rpartition("=")
            gbps = _gib(figure)
            if gbps is None or (sep and endpoint not in endpoints):
                raise GgprecError(f"--rpc-bandwidth {item.strip()!r}: expected [HOST:PORT=]GB/s with GB/s > 0 and "
                                  f"HOST:PORT one of --rpc ({', '.join(endpoints) or 'none given'})")
            if sep:
                given[endpoint] = gbps
            else:
                default = gbps
    return {e: given.get(e, default) for e in endpoints if given.get(e, default) is not None}  # type: ignore[misc]


def _gib(text: str) -> float | None:
    try:
        amount = float(text)
    except ValueError:
        return None
    return amount if 0 < amount < float("inf") else None


def rpc_budgets(specs: Sequence[tuple[str, float | None]], bandwidths: Mapping[str, float] | None = None,
                probe: Callable[[str], object] | None = None) -> list[DeviceBudget]:
    """Each server's devices with their budgets, numbered RPC0, RPC1... as llama.cpp numbers them. Every
    server is probed (rpc.wire.probe: pure Python); one that answers plans with its devices, its budget the
    declared one or what it reports free (a CPU server reports its host's whole RAM: declare it); one that
    does not answer is planned as one device when its budget is declared, else its probe's one-line error."""
    from .rpc.wire import buffer_name
    from .rpc.wire import probe as wire_probe

    probe = probe or wire_probe
    out: list[DeviceBudget] = []
    for endpoint, gib in specs:
        gbps = (bandwidths or {}).get(endpoint)
        try:
            peer = probe(endpoint)
        except GgprecError as e:
            if gib is None:
                raise GgprecError(f"{e}; to plan for it anyway, declare its memory: --rpc {endpoint}=GIB") from None
            device = OffloadDevice(f"RPC{len(out)}", buffer_name(endpoint, 0), int(gib * GIB))
            out.append(DeviceBudget(device, endpoint, int(gib * GIB), False,
                                    f"declared {gib:g} GiB (not probed: {_reason(str(e), endpoint)})", gbps))
            continue
        for d in peer.devices:  # type: ignore[attr-defined]
            device = OffloadDevice(f"RPC{len(out)}", buffer_name(endpoint, d.index), d.free)
            if gib is not None:
                budget, source = int(gib * GIB), f"declared {gib:g} GiB (probed: reports {d.free / GIB:.1f} GiB free)"
            else:
                budget = d.free
                source = (f"probed: reports {d.free / GIB:.1f} GiB free (a CPU server reports its whole RAM: "
                          f"declare --rpc {endpoint}=GIB)")
            out.append(DeviceBudget(device, endpoint, budget, True, source, gbps))
    return out


def _reason(message: str, endpoint: str) -> str:
    prefix = f"RPC server {endpoint}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def host_ram() -> int | None:
    """This machine's RAM in bytes (the client host's default budget)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _split_for(counts: Sequence[int]) -> tuple[float, ...]:
    return tuple(float(c) for c in counts)


def fit_split(info: ModelInfo, settings: RuntimeSettings, devices: Sequence[OffloadDevice],
              budgets: Mapping[str, int], tensor_types: Mapping[str, GgmlType] | None = None) -> SplitFit:
    """The most offloaded split whose every device (and the host, when budgets has HOST) fits; a
    GgprecError when not even -ngl 0 fits the host."""
    n_layer = info.hparams.n_layer
    devices = list(devices)

    def plan_for(counts: list[int]) -> DevicePlan:
        ngl = sum(counts)
        s = settings.with_overrides(n_gpu_layers=ngl, tensor_split=_split_for(counts) if ngl else None)
        if not ngl:
            s = settings.with_overrides(n_gpu_layers=0)
        return plan_devices(info, s, tensor_types, devices=devices)

    def fits(plan: DevicePlan, only: str | None = None) -> bool:
        for share in plan.shares:
            if only is not None and share.device != only:
                continue
            budget = budgets.get(share.device)
            if budget is not None and share.total > budget:
                return False
        return True

    # The devices hold fewer layers as -ngl falls, the host more: the largest -ngl the devices can hold
    # (binary search) is the only candidate worth the host's check, then the ones just below it in case
    # llama.cpp's float rounding moves a layer.
    lo, hi = 0, n_layer + 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fill(mid, devices, plan_for, fits) is not None:
            lo = mid
        else:
            hi = mid - 1
    for ngl in range(lo, max(lo - 3, -1), -1):
        counts = _fill(ngl, devices, plan_for, fits)
        if counts is None:
            continue
        plan = plan_for(counts)
        if _counts_of(plan, devices) == counts and fits(plan):
            return SplitFit(ngl, counts, plan.settings, plan, dict(budgets))
    host = plan_for(_fill(lo, devices, plan_for, fits) or [0] * len(devices)).shares[-1]
    raise GgprecError(f"no split fits: with -ngl {lo} the devices are full and this host needs "
                      f"{host.total / GIB:.2f} GiB (budget {budgets.get(HOST, 0) / GIB:.2f} GiB)")


def _fill(ngl: int, devices: list[OffloadDevice], plan_for: Callable[[list[int]], DevicePlan],
          fits: Callable[..., bool]) -> list[int] | None:
    """Layer counts per device for `ngl` offloaded layers, the last device filled first; None when the
    devices cannot hold them all."""
    counts = [0] * len(devices)
    remaining = ngl
    for i in range(len(devices) - 1, -1, -1):
        if remaining == 0:
            break
        lo, hi = 0, remaining  # the largest count that fits, by binary search (memory grows with it)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = counts.copy()
            trial[i] = mid
            if i > 0:
                trial[0] += remaining - mid  # the rest on the first device, so the plan offloads ngl layers
            if fits(plan_for(trial), only=devices[i].buffer):
                lo = mid
            else:
                hi = mid - 1
        counts[i] = lo
        remaining -= lo
    return counts if remaining == 0 else None


def _counts_of(plan: DevicePlan, devices: Sequence[OffloadDevice]) -> list[int]:
    by_device = {s.device: len(s.layers) for s in plan.shares}
    return [by_device.get(d.buffer, 0) for d in devices]


def check_counts(n_layer: int, counts: Sequence[int]) -> list[str]:
    """llama.cpp's assignment for a split given as layer counts (for tests and the output)."""
    names = [f"d{i}" for i in range(len(counts))]
    return assign_layers(n_layer, sum(counts), names, [float(c) for c in counts])
