"""recommend_devices: the most offloaded split that fits every device's budget, checked by memory.predict
on real shapes (sparse files: header only, no disk) without any server (devices given directly)."""

from __future__ import annotations

import pytest

from ggprec.device_plan import HOST, plan_devices, server_lines
from ggprec.errors import GgprecError
from ggprec.ggml_types import lookup
from ggprec.gguf_info import ModelInfo, read_gguf
from ggprec.layer_split import OffloadDevice, assign_layers, layer_devices
from ggprec.memory import predict
from ggprec.recommend import Recommendation, recommend
from ggprec.recommend.commands import llama_commands
from ggprec.recommend_devices import (
    DeviceBudget,
    fit_split,
    parse_bandwidths,
    parse_budgets,
    parse_rpc_budgets,
    resolve_budgets,
    rpc_budgets,
)
from ggprec.settings import RuntimeSettings
from ggprec.speed import load_speed_model
from ggprec.synth import PRESETS, write_synth
from ggprec.units import GIB

Q4K = lookup("q4_k")


def shape(tmp_path_factory: pytest.TempPathFactory, preset: str) -> ModelInfo:
    return read_gguf(write_synth(tmp_path_factory.mktemp(preset) / f"{preset}.gguf", PRESETS[preset], sparse=True))


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    return shape(tmp_path_factory, "llama-3-70b")


@pytest.fixture(scope="module")
def qwen30b(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    return shape(tmp_path_factory, "qwen3-30b-a3b")


def q4k_types(info: ModelInfo) -> dict[str, object]:
    return {t.name: Q4K for t in info.tensors if len(t.shape) >= 2}


def assert_fits_and_is_maximal(info: ModelInfo, settings: RuntimeSettings, devices: list[OffloadDevice],
                               budgets: dict[str, int]) -> None:
    types = q4k_types(info)
    fit = fit_split(info, settings, devices, budgets, types)  # type: ignore[arg-type]
    for share in fit.plan.shares:  # every device and the host within its budget, by memory.predict
        assert share.total <= budgets[share.device], share.device
    # llama.cpp's rule, given -ngl and -ts = the counts, puts exactly those layer counts on the devices
    layers = assign_layers(info.hparams.n_layer, fit.n_gpu_layers, [d.buffer for d in devices],
                           list(fit.settings.tensor_split))
    assert [layers.count(d.buffer) for d in devices] == fit.counts
    # one more layer on the device that could take it does not fit
    if fit.n_gpu_layers < info.hparams.n_layer + 1:
        for i, device in enumerate(devices):
            more = list(fit.counts)
            more[i] += 1
            s = settings.with_overrides(n_gpu_layers=sum(more), tensor_split=tuple(float(c) for c in more))
            over = plan_devices(info, s, types, devices=devices)  # type: ignore[arg-type]
            assert any(sh.total > budgets[sh.device] for sh in over.shares if sh.device == device.buffer)


def test_llama_70b_over_a_24_gib_gpu_a_32_gib_rpc_host_and_64_gib_ram(llama70b: ModelInfo) -> None:
    # llama.cpp's default order: RPC devices first, then the local GPUs.
    devices = [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB), OffloadDevice("CUDA0", "CUDA0", 24 * GIB)]
    budgets = resolve_budgets(devices, {"hostA:50052": 32, "CUDA0": 24, "host": 64}, None)
    assert budgets == {"RPC0[hostA:50052]": 32 * GIB, "CUDA0": 24 * GIB, HOST: 64 * GIB}
    assert_fits_and_is_maximal(llama70b, RuntimeSettings(n_ctx=8192, flash_attn=True), devices, budgets)


def test_a_split_that_needs_the_host_too(llama70b: ModelInfo) -> None:
    devices = [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB), OffloadDevice("CUDA0", "CUDA0", 24 * GIB)]
    budgets = resolve_budgets(devices, {"RPC0": 8, "CUDA0": 12, "host": 64}, None)
    settings = RuntimeSettings(n_ctx=8192, flash_attn=True)
    assert_fits_and_is_maximal(llama70b, settings, devices, budgets)
    fit = fit_split(llama70b, settings, devices, budgets, q4k_types(llama70b))  # type: ignore[arg-type]
    assert fit.n_gpu_layers < llama70b.hparams.n_layer + 1 and fit.plan.shares[-1].layers


def test_qwen3_30b_a3b_over_two_rpc_hosts(qwen30b: ModelInfo) -> None:
    devices = [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB),
               OffloadDevice("RPC1", "RPC0[hostB:50052]", 64 * GIB)]
    budgets = resolve_budgets(devices, parse_budgets(["RPC0=12,RPC1=12", "host=16"]), None)
    assert_fits_and_is_maximal(qwen30b, RuntimeSettings(n_ctx=8192, flash_attn=True), devices, budgets)


def test_nothing_fits_is_one_line(qwen30b: ModelInfo) -> None:
    devices = [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB)]
    budgets = resolve_budgets(devices, {"RPC0": 1, "host": 2}, None)
    with pytest.raises(GgprecError, match="no split fits: with -ngl \\d+ the devices are full and this host needs"):
        fit_split(qwen30b, RuntimeSettings(n_ctx=8192), devices, budgets, q4k_types(qwen30b))  # type: ignore[arg-type]


def test_budgets_default_to_what_a_device_reports_less_the_margin() -> None:
    devices = [OffloadDevice("RPC0", "RPC0[a:1]", 10 * GIB)]
    assert resolve_budgets(devices, {}, 4 * GIB, margin=GIB) == {"RPC0[a:1]": 9 * GIB, HOST: 3 * GIB}


@pytest.mark.parametrize("bad", ["RPC0", "RPC0=", "RPC0=-1", "=3", "RPC0=inf"])
def test_a_malformed_budget_is_one_line(bad: str) -> None:
    with pytest.raises(GgprecError, match="expected DEVICE=GIB"):
        parse_budgets([bad])


def test_a_budget_for_an_unknown_device_is_one_line() -> None:
    with pytest.raises(GgprecError, match="--budget 'CUDA7': no such device; devices: RPC0, host"):
        resolve_budgets([OffloadDevice("RPC0", "RPC0[a:1]", GIB)], {"CUDA7": 3}, None)



# --- recommend across devices: split, types and KV chosen together, every device checked -----------------

def declared(index: int, endpoint: str, gib: float, gbps: float | None = None) -> DeviceBudget:
    """An RPC server planned from its declared memory (the hosts of these shapes do not exist here)."""
    return DeviceBudget(OffloadDevice(f"RPC{index}", f"RPC0[{endpoint}]", int(gib * GIB)), endpoint, int(gib * GIB),
                        False, f"declared {gib:g} GiB", gbps)


def assert_every_device_fits(info: ModelInfo, rec: Recommendation, devices: list[DeviceBudget], vram: float,
                             ram: float) -> None:
    """memory.predict over the chosen split, recomputed here, within each device's budget less the margin."""
    offload = [d.device for d in devices] + ([OffloadDevice("CUDA0", "CUDA0", int(vram * GIB))] if vram else [])
    types = {n: lookup(t) for n, t in rec.tensor_types.items()}
    pred = predict(info, rec.settings, types, devices=offload)
    budgets = {d.device.buffer: d.budget for d in devices} | ({"CUDA0": int(vram * GIB)} if vram else {})
    for buffer, budget in budgets.items():
        assert pred.device_total(buffer) <= budget - rec.margin, buffer
    assert pred.resident_host <= int(ram * GIB) - rec.margin
    held = {d for d in layer_devices(info.hparams.n_layer, rec.settings.n_gpu_layers, offload,
                                     rec.settings.tensor_split)}
    assert {row["device"] for row in rec.devices if row["layers"] != "-"} - {HOST} == held - {"CPU"}


SPEED = {"host_gbps": 60.0, "gpu_gbps": 900.0}


def test_recommend_llama_70b_over_a_24_gib_gpu_a_32_gib_rpc_host_and_64_gib_ram(llama70b: ModelInfo) -> None:
    devices = [declared(0, "hostA:50052", 32, gbps=900)]
    rec = recommend(llama70b, 24, 64, ctx=8192, devices=devices, speed_model=load_speed_model(**SPEED))
    assert_every_device_fits(llama70b, rec, devices, 24, 64)
    # the chosen weights are more than either device holds: the plan needs the split
    assert rec.weights_bytes > 32 * GIB and rec.settings.tensor_split and all(rec.settings.tensor_split)


def test_a_server_left_empty_at_an_assumed_speed_is_named_with_the_flag_that_sets_it(llama70b: ModelInfo) -> None:
    """No --rpc-bandwidth: the server reads at this host's rate, here a slow 5 GB/s, so the GPU alone wins."""
    rec = recommend(llama70b, 24, 64, ctx=8192, devices=[declared(0, "hostA:50052", 32)],
                    speed_model=load_speed_model(host_gbps=5.0, gpu_gbps=900.0))
    assert rec.settings.tensor_split == (0.0, 81.0)
    assert "RPC0 left empty at an assumed speed (this host's): give --rpc-bandwidth hostA:50052=GB/s" in rec.reasons[1]


def test_recommend_qwen3_30b_a3b_over_two_rpc_hosts(qwen30b: ModelInfo) -> None:
    devices = [declared(0, "hostA:50052", 12), declared(1, "hostB:50052", 12)]
    rec = recommend(qwen30b, 0, 16, ctx=8192, devices=devices, speed_model=load_speed_model(**SPEED))
    assert_every_device_fits(qwen30b, rec, devices, 0, 16)


def test_the_commands_start_each_server_and_give_the_client_the_split(qwen30b: ModelInfo) -> None:
    devices = [declared(0, "hostA:50052", 12), declared(1, "hostB:50052", 12)]
    rec = recommend(qwen30b, 0, 16, ctx=8192, devices=devices, speed_model=load_speed_model(**SPEED))
    cmds = llama_commands(rec, qwen30b)
    assert cmds.hosts == tuple(server_lines(["hostA:50052", "hostB:50052"]))
    ts = ",".join(f"{x:g}" for x in rec.settings.tensor_split)
    assert f"-ngl {rec.settings.n_gpu_layers} " in cmds.server
    assert cmds.server.endswith(f"--rpc hostA:50052,hostB:50052 -ts {ts}")
    # -ts as layer counts: llama.cpp's rule gives each device exactly that many layers
    layers = assign_layers(qwen30b.hparams.n_layer, rec.settings.n_gpu_layers, ["a", "b"],
                           list(rec.settings.tensor_split))
    assert [layers.count("a"), layers.count("b")] == [int(x) for x in rec.settings.tensor_split]


def test_a_server_that_does_not_answer_is_planned_from_its_declared_budget() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    [dev] = rpc_budgets(parse_rpc_budgets([f"{endpoint}=32"]))
    assert (dev.device.buffer, dev.budget, dev.probed) == (f"RPC0[{endpoint}]", 32 * GIB, False)
    assert dev.source.startswith("declared 32 GiB (not probed: connection refused")


def test_a_server_that_does_not_answer_without_a_budget_is_one_line() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    with pytest.raises(GgprecError, match=f"connection refused .*; to plan for it anyway, declare its memory: "
                                          f"--rpc {endpoint}=GIB$"):
        rpc_budgets(parse_rpc_budgets([endpoint]))


@pytest.mark.parametrize("bad", ["hostA:50052=", "hostA:50052=0", "hostA:50052=x", "hostA=3"])
def test_a_malformed_rpc_budget_is_one_line(bad: str) -> None:
    with pytest.raises(GgprecError, match="expected HOST:PORT"):
        parse_rpc_budgets([bad])


def test_rpc_bandwidth_per_server_or_for_all() -> None:
    assert parse_bandwidths(["a:1=900", "100"], ["a:1", "b:2"]) == {"a:1": 900.0, "b:2": 100.0}
    with pytest.raises(GgprecError, match="one of --rpc"):
        parse_bandwidths(["c:3=5"], ["a:1"])


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
