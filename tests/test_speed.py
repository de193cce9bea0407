"""The speed model (ggprec.speed) and `ggprec calibrate`: expected tok/s from per-(device, type)
figures, where those figures come from (flags > this machine's calibration > assumption), and the
calibration measured with llama.cpp, stored and found again by hardware fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec import ggml_types
from ggprec.calibrate import (
    Calibration,
    Point,
    calibrate,
    faster_rounds,
    find_calibration,
    fit,
    speed_model_for,
)
from ggprec.cli import main
from ggprec.gguf_info import read_gguf
from ggprec.history import save_calibration
from ggprec.runner import run_benchmark
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.speed import (
    GPU,
    HOST,
    TG_PREFIX,
    DeviceSpeed,
    SpeedModel,
    bytes_read_per_token,
    decode_cells,
    flat,
    gpu_from_spec,
    load_speed_model,
    matmul_work,
    prompt_attention,
    ubatch_tokens,
)
from ggprec.store import Store
from ggprec.synth import SynthShape

CPU_FIGURES = DeviceSpeed(gbps={"q8_0": 4.0, "q4_k": 2.0, "q6_k": 3.0}, default_gbps=3.0, token_s=0.01,
                          layer_s=0.001, pp_elems_per_s={"q8_0": 1e9}, pp_layer_s=0.0001, source="test figures")
MODEL = SpeedModel({HOST: CPU_FIGURES, GPU: flat(500.0, "500 GB/s assumed")}, n_threads=2)


def test_tg_is_one_over_fixed_costs_plus_bytes_over_bandwidth() -> None:
    # 2 GB of q8_0 at 4 GB/s = 0.5 s, + 10 layers x 1 ms + 10 ms per token = 0.52 s
    assert MODEL.tg_tps({"CPU_Mapped": {"q8_0": 2_000_000_000}}, {"CPU": 10}) == pytest.approx(1 / 0.52)


def test_each_device_adds_its_own_time_and_gpu_names_map_to_the_gpu_figures() -> None:
    reads = {"CPU": {"q8_0": 400_000_000}, "CUDA0": {"q8_0": 5_000_000_000}}
    assert MODEL.tg_tps(reads) == pytest.approx(1 / (0.1 + 0.01 + 0.01))  # host 0.1 + 0.01, GPU 5/500


def test_an_uncalibrated_type_takes_the_nearest_calibrated_one_of_its_family() -> None:
    # q5_k (5.5 bits) is closest to q4_k (4.5) among the K-quants; q8_0 is no K-quant
    assert MODEL.tg_tps({"CPU": {"q5_k": 1_000_000_000}}) == pytest.approx(1 / (0.5 + 0.01))


def test_pp_is_weight_elements_over_the_type_rate_plus_a_cost_per_layer() -> None:
    assert MODEL.pp_tps({"CPU": {"q8_0": 10_000_000}}, {"CPU": 10}) == pytest.approx(1 / (0.01 + 0.001))
    assert MODEL.pp_tps({"CUDA0": {"q8_0": 10_000_000}}) is None  # no pp figures for an assumed GPU


def test_each_weight_row_a_token_multiplies_adds_the_row_cost() -> None:
    model = SpeedModel({HOST: DeviceSpeed(gbps={"q8_0": 4.0}, default_gbps=4.0, row_s=1e-8, source="t")})
    # 2 GB at 4 GB/s = 0.5 s, + 1e6 rows x 10 ns = 0.01 s
    assert model.tg_tps({"CPU": {"q8_0": 2_000_000_000}}, rows={"CPU": {"q8_0": 1e6}}) == pytest.approx(1 / 0.51)


def test_a_prompt_reads_the_weights_once_per_ubatch() -> None:
    model = SpeedModel({HOST: DeviceSpeed(gbps={"q8_0": 4.0}, default_gbps=4.0, pp_elems_per_s={"q8_0": 1e9},
                                          pp_row_s=1e-9, source="t")})
    # 1e7 elements at 1e9/s = 10 ms, + 1e6 rows x 1 ns = 1 ms, + 400 MB at 4 GB/s = 100 ms over 100 tokens = 1 ms
    pp = model.pp_tps({"CPU": {"q8_0": 10_000_000}}, rows={"CPU": {"q8_0": 1e6}}, stream={"CPU": {"q8_0": 400_000_000}},
                      ubatch_tokens=100)
    assert pp == pytest.approx(1 / 0.012)


def test_a_quantized_cache_adds_its_cost_per_attention_element_to_a_prompt() -> None:
    figures = DeviceSpeed(gbps={}, default_gbps=4.0, pp_elems_per_s={"q8_0": 1e9}, pp_kv_s={"q4_0": 1e-12}, source="t")
    model = SpeedModel({HOST: figures})
    base = model.pp_tps({"CPU": {"q8_0": 10_000_000}}, attention={"CPU": 1e9}, kv_types=("f16", "f16"))
    quantized = model.pp_tps({"CPU": {"q8_0": 10_000_000}}, attention={"CPU": 1e9}, kv_types=("q4_0", "q4_0"))
    assert (base, quantized) == (pytest.approx(1 / 0.01), pytest.approx(1 / 0.011))  # + 1e9 x 1 ps


def test_flash_attention_visits_the_unmasked_cells_without_it_every_padded_one(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    hp = info.hparams
    per_cell = hp.n_layer * hp.n_head * (hp.head_dim_k + hp.head_dim_v)
    assert prompt_attention(info, RuntimeSettings(flash_attn=True), 127) == per_cell * 64
    assert prompt_attention(info, RuntimeSettings(flash_attn=False), 127) == per_cell * 256
    assert prompt_attention(info, RuntimeSettings(flash_attn=False), 300) == per_cell * 512


@pytest.mark.parametrize("pp, ubatch, tokens", [(128, 512, 128), (512, 512, 512), (1000, 512, 500), (2048, 256, 256)])
def test_a_prompt_splits_into_ubatches_of_n_ubatch(pp: int, ubatch: int, tokens: float) -> None:
    assert ubatch_tokens(pp, RuntimeSettings(n_batch=2048, n_ubatch=ubatch)) == tokens


def test_a_token_multiplies_every_matrix_row_and_the_tied_head(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    blocks = sum(t.n_elements // t.shape[0] for t in info.tensors if t.layer is not None and len(t.shape) == 2)
    assert matmul_work(info, RuntimeSettings(n_ctx=256)).rows == {HOST: {"f16": blocks + info.hparams.n_vocab}}


def test_a_prompt_token_skips_the_head_and_the_last_blocks_ffn(tiny_model: Path) -> None:
    # llama.cpp keeps only the output rows (inp_out_ids) after the last block's attention
    info = read_gguf(tiny_model)
    last = info.hparams.n_layer - 1
    multiplied = [t for t in info.tensors if t.layer is not None and len(t.shape) == 2
                  and not (t.layer == last and t.role.startswith("ffn"))]
    work = matmul_work(info, RuntimeSettings(n_ctx=256), prompt=True)
    assert work.rows == {HOST: {"f16": sum(t.n_elements // t.shape[0] for t in multiplied)}}
    assert work.elements == {HOST: {"f16": sum(t.n_elements for t in multiplied)}}


def test_the_fit_recovers_the_figures_the_runs_were_made_from() -> None:
    truth = DeviceSpeed(gbps={"f16": 40.0, "q8_0": 30.0}, default_gbps=30.0, token_s=2e-5, layer_s=3e-5,
                        pp_elems_per_s={"f16": 2e11, "q8_0": 1.5e11}, pp_layer_s=4e-6, row_s=8e-9, pp_row_s=2e-9,
                        type_row_s={"f16": 8e-9, "q8_0": 5e-9}, type_pp_row_s={"f16": 2e-9, "q8_0": 1e-9})

    def point(model: str, type_name: str, n_layer: int, n_bytes: int, elems: int, rows: int) -> Point:
        tg_s = (truth.token_s + n_layer * truth.layer_s + (rows + 2048) * truth.row_cost(type_name)
                + n_bytes / (truth.gbps[type_name] * 1e9))
        pp_s = (elems / truth.pp_elems_per_s[type_name] + n_layer * truth.pp_layer_s
                + rows * truth.row_cost(type_name, prompt=True)
                + n_bytes / (truth.gbps[type_name] * 1e9) / 128)
        return Point(HOST, model, type_name, n_layer, 64, n_bytes, elems, 1 / tg_s, 0.0, 1 / pp_s,
                     rows_per_token=rows + 2048, pp_rows_per_token=rows, pp_stream_bytes=n_bytes, pp_tokens=128)

    points = [point("narrow", "f16", 2, 400_000, 200_000, 1_000),
              point("narrow", "f16", 24, 4_800_000, 2_400_000, 12_000),
              point("mid", "f16", 16, 96_000_000, 48_000_000, 78_000),
              point("mid", "q8_0", 16, 51_000_000, 48_000_000, 78_000),
              point("wide", "f16", 2, 250_000_000, 121_000_000, 47_000),
              point("wide", "q8_0", 2, 133_000_000, 121_000_000, 47_000)]
    got, _ = fit(points, HOST)
    for name in ("token_s", "layer_s", "row_s", "pp_layer_s", "pp_row_s", "type_row_s", "type_pp_row_s"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    assert got.gbps == pytest.approx(truth.gbps, rel=1e-6)
    assert got.pp_elems_per_s == pytest.approx(truth.pp_elems_per_s, rel=1e-6)


def test_a_fixed_cost_the_noise_drives_negative_is_zero_and_the_others_are_refitted() -> None:
    # decode times made with token_s = -5 us: the fit keeps token_s at 0 and still finds a cost per row
    def point(model: str, n_layer: int, n_bytes: int, rows: int) -> Point:
        tg_s = -5e-6 + n_layer * 1e-5 + rows * 1e-8 + n_bytes / 60e9
        return Point(HOST, model, "f16", n_layer, 64, n_bytes, 0, 1 / tg_s, 0.0, None, rows_per_token=rows)

    got, notes = fit([point("narrow", 2, 220_000, 1_536), point("narrow", 24, 1_900_000, 12_800),
                      point("mid", 16, 99_000_000, 80_000), point("wide", 2, 250_000_000, 49_000)], HOST)
    assert got.token_s == 0.0 and got.row_s > 0 and got.layer_s > 0
    assert "decode: token_s fitted negative (noise); set to 0 and the rest refitted" in notes


def test_a_run_measured_in_two_rounds_keeps_its_faster_tg_and_faster_pp() -> None:
    first = Point(HOST, "mid", "f16", 16, 512, 1, 1, 300.0, 0.0, 2000.0)
    second = Point(HOST, "mid", "f16", 16, 512, 1, 1, 350.0, 0.0, 1500.0)
    other = Point(HOST, "wide", "f16", 2, 2048, 1, 1, 200.0, 0.0, 900.0)
    kept = faster_rounds([first, other, second])
    assert [(p.model, p.tg_tps, p.pp_tps) for p in kept] == [("mid", 350.0, 2000.0), ("wide", 200.0, 900.0)]


def test_bytes_read_per_token_counts_every_weight_once_one_embedding_row_the_tied_head_and_the_kv_cells(
        tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    reads = bytes_read_per_token(info, RuntimeSettings(n_ctx=512), kv_cells=100)
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    f16 = sum(t.n_bytes for t in info.tensors if t.type.name == "f16" and t is not embd)
    f32 = sum(t.n_bytes for t in info.tensors if t.type.name == "f32")  # the norms
    hp = info.hparams
    kv = hp.n_layer * 2 * (hp.n_head_kv[0] * hp.head_dim_k) * 2 * 100  # K and V rows, f16, 100 cells
    row = embd.shape[0] * 2
    assert reads == {HOST: {"f16": f16 + row + embd.n_bytes, "kv:f16": kv, "f32": f32}}


def test_offloaded_layers_and_the_head_are_read_on_the_gpu(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    reads = bytes_read_per_token(info, RuntimeSettings(n_ctx=512, n_gpu_layers=ALL_LAYERS), kv_cells=0)
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert reads[HOST] == {"f16": embd.shape[0] * 2}  # only the embedding row stays on the host
    assert sum(reads["CUDA0"].values()) == sum(t.n_bytes for t in info.tensors)  # the head is token_embd again
    est = MODEL.expected(info, RuntimeSettings(n_ctx=512, n_gpu_layers=ALL_LAYERS, n_threads=2))
    assert est.source == "host: test figures; GPU: 500 GB/s assumed"


def test_expected_uses_the_types_of_the_file_that_will_run(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    q8 = {t.name: ggml_types.lookup("q8_0") for t in info.tensors if len(t.shape) == 2}
    settings = RuntimeSettings(n_ctx=256, n_threads=2)
    as_f16, as_q8 = MODEL.expected(info, settings), MODEL.expected(info, settings, q8)
    assert as_q8.tg_tps > as_f16.tg_tps
    assert as_q8.source == "host: test figures"  # the GPU reads nothing here


def test_expected_says_when_the_threads_differ_from_the_calibration(tiny_model: Path) -> None:
    est = MODEL.expected(read_gguf(tiny_model), RuntimeSettings(n_ctx=256, n_threads=1))
    assert est.source.endswith("(calibrated with 2 threads, this runs 1)")


def _calibration() -> Calibration:
    return Calibration({HOST: CPU_FIGURES}, [], n_threads=2, effort={}, seconds=1.0)


def test_flags_win_over_a_calibration_which_wins_over_assumptions(tmp_path: Path) -> None:
    cal = _calibration()
    given = load_speed_model(host_gbps=60, gpu_gbps=936, calibration=cal)
    assert given.describe().startswith("host: 60 GB/s given; GPU: 936 GB/s given, per-type efficiency")
    assert given.n_threads is None
    calibrated = load_speed_model(gpu_gbps=936, calibration=cal)
    assert calibrated.devices[HOST] is CPU_FIGURES and calibrated.n_threads == 2
    with Store(tmp_path / "empty.db") as store:
        assumed = speed_model_for(store=store)
    assert assumed.devices[HOST].source.endswith("assumed (numpy copy; run `ggprec calibrate` to measure llama.cpp)")
    assert assumed.devices[GPU].source == "500 GB/s assumed (give --gpu-bandwidth)"


def test_a_bandwidth_flag_must_be_positive() -> None:
    from ggprec.errors import GgprecError

    with pytest.raises(GgprecError, match="host bandwidth must be a positive"):
        load_speed_model(host_gbps=0, calibration=_calibration())


TINY_WIDE = SynthShape(n_layer=1, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=512, n_ctx=256)
TINY_MID = SynthShape(n_layer=1, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_vocab=512, n_ctx=256)


@pytest.fixture(scope="module")
def tiny_calibration(tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    """A real calibration (llama.cpp runs) on tiny shapes: seconds, not a minute."""
    return calibrate(["q8_0"], quick=True, threads=1, gpu=False, wide=TINY_WIDE, mid=TINY_MID,
                     work_dir=tmp_path_factory.mktemp("calibrate"))


def test_calibration_measures_f16_and_the_asked_types_with_llama_cpp(tiny_calibration: Calibration) -> None:
    cal = tiny_calibration
    assert sorted(cal.speeds) == [HOST]
    assert sorted(cal.speeds[HOST].gbps) == ["f16", "q8_0"]  # f16 always: the reference of the fit
    assert all(v > 0 for v in cal.speeds[HOST].gbps.values())
    assert sorted(cal.speeds[HOST].pp_elems_per_s) == ["f16", "q8_0"]
    wide = [p for p in cal.points if p.model == "wide"]
    assert [(p.type, p.n_layer, p.n_embd) for p in wide] == [("f16", 1, 256), ("q8_0", 1, 256)]
    assert [p.n_layer for p in cal.points if p.model == "narrow"] == [2, 24]
    assert [(p.n_layer, p.n_embd, p.type, p.kv_type) for p in cal.points if p.model == "mid"] == [
        (4, 128, "f16", "f16"), (4, 128, "f16", "q8_0"), (4, 128, "f16", "q4_0"),  # QUICK's depth, each KV cache
        (4, 128, "q8_0", "f16")]  # and each weight type


def test_a_calibration_is_found_again_by_this_machines_fingerprint_only(tiny_calibration: Calibration,
                                                                         tmp_path: Path) -> None:
    from ggprec.hardware import fingerprint

    with Store(tmp_path / "h.db") as store:
        row = save_calibration(store, tiny_calibration)
        found = find_calibration(store)
        other = find_calibration(store, hardware={**fingerprint(), "llama_cpp_python": "0.0.1"})
    assert found is not None and found.id == row and other is None
    assert found.speeds[HOST].gbps == tiny_calibration.speeds[HOST].gbps
    assert found.speeds[HOST].source.startswith(f"calibrated (history #{row}, ")
    assert load_speed_model(calibration=found).describe().startswith(f"host: calibrated (history #{row}, ")


def test_run_carries_the_expected_tg_of_the_speed_model_it_was_given(tiny_model: Path) -> None:
    settings = RuntimeSettings(n_ctx=128, n_batch=64, n_ubatch=64, n_threads=2)
    r = run_benchmark(tiny_model, settings, pp=0, tg=4, reps=1, speed_model=MODEL)
    want = MODEL.expected(read_gguf(tiny_model), r.settings, kv_cells=TG_PREFIX + 2)
    assert (r.expected_tg_tps, r.expected_tg_source) == (want.tg_tps, want.source)
    from ggprec.compare import _speed_fields

    fields = _speed_fields(r)
    assert fields["expected_tg_tps"] == want.tg_tps
    assert fields["tg_vs_expected"] == pytest.approx(r.tg_tps.median / want.tg_tps)


def test_calibrate_command_stores_and_prints_json_then_run_uses_it(tiny_model: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    res = CliRunner().invoke(main, ["calibrate", "--quick", "--types", "q8_0", "--json", "--db", db])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert sorted(doc["speeds"]["CPU"]["gbps"]) == ["f16", "q8_0"] and doc["id"] == 1 and doc["schema"] == 1
    with Store(db) as store:
        assert [r.kind for r in store.query()] == ["calibration"]
    res = CliRunner().invoke(main, ["run", str(tiny_model), "--pp", "8", "--tg", "4", "--reps", "1", "-c", "128",
                                    "--json", "--db", db])
    assert res.exit_code == 0, res.output
    run = json.loads(res.output[res.output.index("{"):])
    assert run["expected_tg_tps"] > 0 and run["expected_tg_source"].startswith("host: calibrated (history #1, ")


def test_an_moe_token_reads_and_multiplies_only_the_used_share_of_its_routed_experts(tmp_path: Path) -> None:
    from ggprec.roles import is_routed_expert
    from ggprec.speed import matmul_elements
    from ggprec.synth import shape_for, write_synth

    info = read_gguf(write_synth(tmp_path / "moe.gguf", shape_for("tiny-moe"), "f16", sparse=True))
    hp = info.hparams
    share = hp.n_expert_used / hp.n_expert
    last = hp.n_layer - 1  # a prompt token skips the last block's FFN and the head (last token only)
    experts = [t for t in info.tensors if is_routed_expert(t.role) and t.layer != last]
    assert experts and 0 < share < 1
    dense = sum(t.n_elements for t in info.tensors
                if len(t.shape) > 1 and not is_routed_expert(t.role)
                and not (t.layer == last and t.role.startswith("ffn"))
                and t.name not in ("token_embd.weight", "output.weight"))  # a lookup; the head
    elems = matmul_elements(info, RuntimeSettings(n_ctx=256))
    assert elems == {HOST: {"f16": dense + round(sum(t.n_elements for t in experts) * share)}}
    reads = bytes_read_per_token(info, RuntimeSettings(n_ctx=256), kv_cells=0)
    assert sum(reads[HOST].values()) < sum(t.n_bytes for t in info.tensors)


# --- a GPU known by its spec bandwidth: efficiencies measured on an H100 (ggprec/data/gpu_speed.json) --------

H100 = SpeedModel({HOST: flat(50.0, "50 GB/s given"), GPU: gpu_from_spec(3000.0)})
ON_GPU = RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_ctx=4096, flash_attn=True)


def _h100_tg(info, settings: RuntimeSettings, profile: str, depth: int = 0) -> float:  # noqa: ANN001
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile

    types = resolve_plan(info, load_profile(profile)).tensor_types()
    return H100.expected(info, settings, types, kv_cells=decode_cells(depth, 128)).tg_tps


def test_a_spec_bandwidth_reproduces_the_h100_decode_speeds_it_was_fitted_on(sparse_8b_session: Path) -> None:
    # Fitted on these two rows (F16 166.4, Q8_0 224.7 tok/s): the model must give them back, not 2x more.
    info = read_gguf(sparse_8b_session)
    assert _h100_tg(info, ON_GPU, "f16") == pytest.approx(166.4, rel=0.02)
    assert _h100_tg(info, ON_GPU, "q8_0") == pytest.approx(224.7, rel=0.02)


def test_smaller_gpu_weights_reach_less_of_the_spec_bandwidth() -> None:
    gpu = gpu_from_spec(1000.0)
    assert gpu.gbps["f16"] > gpu.gbps["q8_0"] > gpu.gbps["q4_0"]
    assert gpu.gbps["q8_0"] / 1000.0 == pytest.approx(gpu_from_spec(3000.0).gbps["q8_0"] / 3000.0)


def test_a_quantized_kv_cache_makes_gpu_decode_slower_not_faster(sparse_8b_session: Path) -> None:
    info = read_gguf(sparse_8b_session)
    long_ctx = ON_GPU.with_overrides(n_ctx=32768)
    q8_kv = long_ctx.with_overrides(cache_type_k="q8_0", cache_type_v="q8_0")
    for depth in (0, 16384):
        assert _h100_tg(info, q8_kv, "q8_0", depth) < _h100_tg(info, long_ctx, "q8_0", depth)


def test_plan_forecasts_buffers_per_device_and_tg_for_a_target_machine(sparse_8b_session: Path) -> None:
    r = CliRunner().invoke(main, ["plan", str(sparse_8b_session), "-p", "q8_0", "-ngl", "99", "-c", "4096",
                                  "-fa", "on", "--gpu-bandwidth", "3000", "--host-bandwidth", "50",
                                  "--cpu-flags", "avx2", "--json"])
    assert r.exit_code == 0, r.output
    fc = json.loads(r.stdout)["forecast"]
    assert fc["host_rules"] == "extra CPU buffers: CPU_REPACK iq4_nl,mxfp4,q4_0,q4_k"
    assert fc["memory"]["buffers"]["kv:CUDA0"] == 512 * 2**20  # 4096 cells x 32 layers x (K + V) f16
    assert set(fc["device_totals"]) == {"host", "CUDA0"} and fc["depth"] == 0
    assert fc["expected"]["tg_tps"] == pytest.approx(224.7, rel=0.02)


def test_plan_at_a_depth_expects_slower_decoding(sparse_8b_session: Path) -> None:
    args = ["plan", str(sparse_8b_session), "-p", "q8_0", "-ngl", "99", "-c", "32768", "-fa", "on",
            "--gpu-bandwidth", "3000", "--host-bandwidth", "50", "--json"]
    short, deep = (json.loads(CliRunner().invoke(main, args + extra).stdout)["forecast"]
                   for extra in ([], ["-d", "16384"]))
    assert deep["kv_cells"] == 16384 + 64 and deep["expected"]["tg_tps"] < short["expected"]["tg_tps"]
