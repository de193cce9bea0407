"""ggprec sensitivity on the tiny synthetic f32 model: one group at a time quantized by llama.cpp to the
probe type, evaluated against the model itself, stored where recommend finds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.cpu_buffers import from_flags
from ggprec.errors import GgprecError
from ggprec.ggml_types import lookup
from ggprec.gguf_info import read_gguf
from ggprec.memory import predict
from ggprec.recommend import recommend, stored_sensitivity
from ggprec.sensitivity import SensitivityResult, heat_matrix, measure_sensitivity, sensitivity_groups
from ggprec.store import Store
from ggprec.units import GIB, MIB

FAST = {"grouping": "role", "n_ctx": 128, "chunks": 2, "threads": 2}


def pinned_predict(info, settings, types):  # noqa: ANN001, ANN201 - recommend's Predictor
    return predict(info, settings, tensor_types=types, host=from_flags(set()))


@pytest.fixture(scope="session")
def sens_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sensdb") / "history.db"


@pytest.fixture(scope="session")
def tiny_sensitivity(tiny_model_f32: Path, sens_db: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> SensitivityResult:
    """Measured and kept in the history as the CLI keeps it (history.save_sensitivity)."""
    from ggprec.history import save_sensitivity

    heat = tmp_path_factory.mktemp("heat") / "sens.png"
    res = measure_sensitivity(tiny_model_f32, heatmap=heat, db=sens_db, also=("q8_0",), **FAST)
    with Store(sens_db) as store:
        save_sensitivity(store, res)
    return res


def test_role_grouping_is_one_group_per_role_plus_the_tied_head(tiny_model_f32: Path) -> None:
    keys = [g.key for g in sensitivity_groups(read_gguf(tiny_model_f32), "role")]
    assert sorted(keys) == sorted(["token_embd", "attn_q@0-1", "attn_k@0-1", "attn_v@0-1", "attn_output@0-1",
                                   "ffn_gate@0-1", "ffn_up@0-1", "ffn_down@0-1"])


def test_every_group_is_measured_with_the_bytes_llama_cpp_saves(tiny_sensitivity: SensitivityResult,
                                                                tiny_model_f32: Path) -> None:
    info = read_gguf(tiny_model_f32)
    q4 = lookup("q4_0")
    for g in tiny_sensitivity.groups:
        tensors = [info.tensor(n) for n in g.tensors]
        assert g.bytes_saved == sum(t.n_bytes - q4.tensor_bytes(t.shape) for t in tensors)
        assert g.probe_written == "q4_0"
        assert g.kld > 0  # random weights at 4 bits move the logits
    assert len(tiny_sensitivity.ranking()) == 8


def test_the_same_measurement_repeated_gives_the_same_ranking(tiny_sensitivity: SensitivityResult,
                                                               tiny_model_f32: Path) -> None:
    again = measure_sensitivity(tiny_model_f32, **FAST)
    assert again.ranking() == tiny_sensitivity.ranking()


def test_result_is_stored_and_drives_recommend(tiny_sensitivity: SensitivityResult, tiny_model_f32: Path,
                                               sens_db: Path) -> None:
    with Store(sens_db) as store:
        found = stored_sensitivity(str(tiny_model_f32), store=store)
    assert found is not None and found["id"] == tiny_sensitivity.record_id
    rec = recommend(read_gguf(tiny_model_f32), 0, ram_gb=16, ctx=512, sensitivity=found, host_gbps=20.0)
    assert rec.loss_source == f"measured: sensitivity #{tiny_sensitivity.record_id} (q4_0+q8_0 probes, 8 groups fitted)"


def test_a_further_probe_type_is_measured_for_every_group_and_costs_less_kld(
        tiny_sensitivity: SensitivityResult) -> None:
    assert tiny_sensitivity.also == ["q8_0"]
    for g in tiny_sensitivity.groups:
        assert set(g.kld_at) == {"q4_0", "q8_0"} and g.kld_at["q4_0"] == g.kld
        assert 0 < g.kld_at["q8_0"] < g.kld_at["q4_0"]


def test_reuse_runs_only_the_passes_not_stored_and_takes_the_rest_from_the_history(
        tiny_sensitivity: SensitivityResult, tiny_model_f32: Path, sens_db: Path) -> None:
    run: list[str] = []
    again = measure_sensitivity(tiny_model_f32, db=sens_db, also=("q8_0", "q5_0"), reuse=True,
                                progress=lambda key, i, n: run.append(key), **FAST)
    assert run == [f"{g.key} at q5_0" for g in again.groups] + ["done"]
    assert [(g.kld, g.kld_se, g.kld_at["q8_0"]) for g in again.groups] == \
        [(g.kld, g.kld_se, g.kld_at["q8_0"]) for g in tiny_sensitivity.groups]


def test_heatmap_is_a_png_with_a_row_per_role(tiny_sensitivity: SensitivityResult) -> None:
    assert tiny_sensitivity.heatmap is not None
    assert Path(tiny_sensitivity.heatmap).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    roles, matrix = heat_matrix(tiny_sensitivity, 2)
    assert len(roles) == 8 and all(len(row) == 2 for row in matrix)


def test_a_quantized_model_is_refused_with_a_one_line_error(demo_model: Path) -> None:
    with pytest.raises(GgprecError, match="holds quantized weights"):
        measure_sensitivity(demo_model)


def test_cli_rejects_an_unknown_probe_type_with_exit_2(tiny_model_f32: Path) -> None:
    r = CliRunner().invoke(main, ["sensitivity", str(tiny_model_f32), "--probe-type", "q4_x", "--no-store"])
    assert r.exit_code == 2 and "unknown ggml type" in r.output


def test_verify_quantizes_the_recommended_plan_and_measures_its_kld(tiny_sensitivity: SensitivityResult,
                                                                    tiny_model_f32: Path, sens_db: Path) -> None:
    from ggprec.recommend_verify import verify

    with Store(sens_db) as store:
        found = stored_sensitivity(str(tiny_model_f32), store=store)
    info = read_gguf(tiny_model_f32)
    # The budget comes from the prediction, under pinned buffer rules (no repacking), so that it means the
    # same on every CPU: halfway between the smallest and the largest plan, the plan must shrink its weights.
    roomy = recommend(info, 0, ram_gb=1, ctx=128, margin_mb=1, sensitivity=found, host_gbps=20.0,
                      predictor=pinned_predict)
    rams = [r.ram_bytes for r in roomy.front]
    budget = (min(rams) + max(rams)) / 2 + MIB  # + the 1 MiB margin
    rec = recommend(info, 0, ram_gb=budget / GIB, ctx=128, margin_mb=1, sensitivity=found, host_gbps=20.0,
                    predictor=pinned_predict)
    assert rec.row.ram_bytes + MIB <= budget < max(rams) + MIB
    assert rec.expected_kld > roomy.front[-1].expected_kld
    v = verify(rec, str(tiny_model_f32), chunks=2, n_ctx=128)
    assert v["predicted_kld"] == rec.expected_kld and v["measured_kld"] > 0
    assert v["file_bytes"] < read_gguf(tiny_model_f32).file_size


def test_imatrix_quantizes_every_pass_and_is_kept_with_the_run(tiny_model_f32: Path, tiny_imatrix_file: Path,
                                                               tiny_sensitivity: SensitivityResult,
                                                               sens_db: Path) -> None:
    from ggprec.history import save_sensitivity

    res = measure_sensitivity(tiny_model_f32, db=sens_db, imatrix_path=tiny_imatrix_file, reuse=True, **FAST)
    plain = {g.key: g.kld for g in tiny_sensitivity.groups}
    assert any(g.kld != plain[g.key] for g in res.groups if g.key != "token_embd")  # measured anew, with it
    assert res.notes[-1] == f"every pass quantized with the importance matrix {tiny_imatrix_file}"
    with Store(sens_db) as s:
        row_id = save_sensitivity(s, res, None, str(tiny_imatrix_file))
        row = next(r for r in s.query(kind="sensitivity") if r.id == row_id)
    assert row.settings["imatrix_sha256"] is not None
