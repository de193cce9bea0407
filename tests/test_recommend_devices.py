"""recommend_devices: the most offloaded split that fits every device's budget, checked by memory.predict
on real shapes (sparse files: header only, no disk) without any server (devices given directly)."""

from __future__ import annotations

import pytest

from ggprec.device_plan import HOST, plan_devices
from ggprec.errors import GgprecError
from ggprec.ggml_types import lookup
from ggprec.gguf_info import ModelInfo, read_gguf
from ggprec.layer_split import OffloadDevice, assign_layers
from ggprec.recommend_devices import fit_split, parse_budgets, resolve_budgets
from ggprec.settings import RuntimeSettings
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

