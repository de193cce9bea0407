"""The speed model across devices: each device's bytes at its own rate (an RPC server's at this host's unless
given), and a per-token cost for every run of layers on an RPC server (the hop, measured on loopback)."""

from __future__ import annotations

import pytest

from ggprec.gguf_info import read_gguf
from ggprec.layer_split import OffloadDevice, layer_devices
from ggprec.memory import bytes_read_per_token
from ggprec.settings import RuntimeSettings
from ggprec.speed import load_speed_model, rpc_facts, rpc_hops, split_reads
from ggprec.synth import PRESETS, write_synth
from ggprec.units import GIB

A, B = "RPC0[hostA:50052]", "RPC0[hostB:50052]"
N = 10**9


def test_hops_are_the_runs_of_layers_on_rpc_servers() -> None:
    assert rpc_hops(["CPU", A, A, B, B]) == 2
    assert rpc_hops(["CPU", A, "CUDA0", A]) == 2  # back to a server after the GPU: a second round trip
    assert rpc_hops(["CPU", "CUDA0", "CUDA0"]) == 0


def test_each_hop_adds_the_measured_seconds_per_token() -> None:
    model = load_speed_model(host_gbps=50.0)
    reads = {"CPU": {"q8_0": N}}
    extra = 1 / model.tg_tps(reads, hops=2) - 1 / model.tg_tps(reads)
    assert extra == pytest.approx(2 * rpc_facts()["hop_ms"] / 1000, rel=1e-9)


def test_an_rpc_device_reads_at_this_hosts_rate_unless_given() -> None:
    model = load_speed_model(host_gbps=50.0)
    assert model.tg_tps({A: {"q8_0": N}}) == model.tg_tps({"CPU": {"q8_0": N}}) == pytest.approx(50.0)
    given = model.with_devices({A: 400.0})
    assert given.tg_tps({A: {"q8_0": N}}) == pytest.approx(400.0)
    assert "400 GB/s given" in given.describe_split([A]) and "each RPC hop" in given.describe_split([A])


def test_a_split_reads_what_one_device_reads_spread_over_the_devices(tmp_path: object) -> None:
    from pathlib import Path

    info = read_gguf(write_synth(Path(str(tmp_path)) / "m.gguf", PRESETS["llama-3.2-1b"], sparse=True))
    devices = [OffloadDevice("RPC0", A, GIB), OffloadDevice("RPC1", B, GIB)]
    settings = RuntimeSettings(n_ctx=1024, n_gpu_layers=99, tensor_split=(1.0, 3.0))
    reads, layers = split_reads(info, settings, devices, kv_cells=100)
    assert layers == layer_devices(info.hparams.n_layer, 99, devices, (1.0, 3.0))
    alone = bytes_read_per_token(info, settings.with_overrides(n_gpu_layers=0))
    weights = {d: sum(n for t, n in by.items() if not t.startswith("kv:")) for d, by in reads.items()}
    assert sum(weights.values()) == sum(sum(by.values()) for by in alone.values())
    on_b = [il for il, d in enumerate(layers[:-1]) if d == B]  # each layer's KV rows on its own device
    hp = info.hparams
    assert reads[B]["kv:f16"] == sum(2 * 2 * hp.n_head_kv[il] * hp.head_dim_k * 100 for il in on_b)
