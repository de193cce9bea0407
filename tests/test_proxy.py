"""ggprec.proxy: the per-tensor error measured on the file's own weights with ggml's quantizer, on tiny
synthetic models (f16, f32, a q4_k copy written by llama.cpp, a mixture of experts)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ggprec.errors import GgprecError
from ggprec.gguf_info import read_gguf
from ggprec.synth import PRESETS, shape_for, write_synth

pytestmark = pytest.mark.llama  # ggml's quantizer comes from llama.cpp's libggml-base

TENSOR = "blk.0.attn_q.weight"


class StandIn:
    """A minimal importance matrix: the ColumnWeights protocol over plain numpy arrays."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights

    def column_weights(self, name: str) -> np.ndarray | None:
        return self.weights.get(name)


@pytest.fixture(scope="module")
def tiny_q4k(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny f16 model quantized by llama.cpp's llama_model_quantize to q4_k (rows of 256)."""
    from ggprec.plan import resolve_plan
    from ggprec.profile import Profile
    from ggprec.quantize import quantize

    plan = resolve_plan(read_gguf(tiny_model), Profile("q4k", default="q4_k"))
    return quantize(tiny_model, plan, tmp_path_factory.mktemp("q4k") / "tiny-q4_k.gguf", threads=2)


@pytest.fixture(scope="module")
def grid_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The tiny model in f32 with attn_q rewritten: its first half of columns lies exactly on the q8_0 grid
    (k x 2^-10 with a |k| = 127 in every block: quantized without any error), the second half is Gaussian.
    Returns the file and the number of exact columns."""
    path = write_synth(tmp_path_factory.mktemp("grid") / "grid-f32.gguf", PRESETS["tiny"], dtype="f32")
    t = read_gguf(path).tensor(TENSOR)
    assert t is not None
    n_in, n_out = t.shape
    rng = np.random.default_rng(7)
    x = np.empty((n_out, n_in), dtype=np.float32)
    half = n_in // 2
    k = rng.integers(-127, 128, size=(n_out, half))
    k[:, ::32] = 127  # every 32-block holds its maximum, so the q8_0 scale is exactly 2^-10
    x[:, :half] = k * 2.0**-10
    x[:, half:] = rng.standard_normal((n_out, n_in - half)) * 0.05
    mm = np.memmap(path, dtype=np.float32, mode="r+", offset=t.offset, shape=(n_out, n_in))
    mm[:] = x
    mm.flush()
    del mm
    return path, half


def test_a_tensor_at_its_own_type_costs_exactly_zero(tiny_model: Path, tiny_q4k: Path) -> None:
    from ggprec.proxy import tensor_error

    assert tensor_error(tiny_model, None, TENSOR, "f16") == 0.0
    assert tensor_error(tiny_q4k, None, TENSOR, "q4_k") == 0.0


def test_a_lossless_round_trip_measures_zero_without_the_short_circuit(tiny_model: Path) -> None:
    # f16 -> f32 is exact: computed through read, dequantize, quantize, dequantize, the error is 0 too,
    # so the file's own values are the reference and nothing else adds error.
    from ggprec.proxy import tensor_error

    assert tensor_error(tiny_model, None, TENSOR, "f32") == 0.0


def test_error_grows_as_bits_shrink_q8_0_q4_0_q2_k(tiny_model: Path) -> None:
    from ggprec.proxy import error_table

    table = error_table(tiny_model, None, ["q8_0", "q4_0", "q2_k"], threads=2)
    for name in table.errors:
        assert 0 < table.error(name, "q8_0") < table.error(name, "q4_0") < table.error(name, "q2_k"), name
    # Gaussian weights: q4_0's relative error is that of 16 levels over a block's range (~0.7%).
    assert 0.005 < table.error(TENSOR, "q4_0") < 0.01


def test_importance_weights_move_the_error_towards_heavy_columns(grid_model: tuple[Path, int]) -> None:
    # q8_0 ignores the column weights when quantizing, so only the weighting of the error differs: weight on
    # the exact (grid) columns lowers the figure, weight on the Gaussian columns raises it.
    from ggprec.proxy import tensor_error

    path, half = grid_model
    n_in = read_gguf(path).tensor(TENSOR).shape[0]  # type: ignore[union-attr]
    heavy_exact = np.ones((1, n_in), dtype=np.float32)
    heavy_exact[0, :half] = 100.0
    heavy_noisy = np.ones((1, n_in), dtype=np.float32)
    heavy_noisy[0, half:] = 100.0
    uniform = tensor_error(path, None, TENSOR, "q8_0")
    on_exact = tensor_error(path, None, TENSOR, "q8_0", StandIn({TENSOR: heavy_exact}))
    on_noisy = tensor_error(path, None, TENSOR, "q8_0", StandIn({TENSOR: heavy_noisy}))
    assert on_exact < uniform < on_noisy
    # Only the Gaussian half errs: its error over the total energy, with exact weights 1 on it.
    t = read_gguf(path).tensor(TENSOR)
    assert t is not None
    x = np.memmap(path, dtype=np.float32, mode="r", offset=t.offset, shape=(t.shape[1], n_in)).astype(np.float64)
    e_exact, e_noisy = float((x[:, :half] ** 2).sum()), float((x[:, half:] ** 2).sum())
    noisy_err = uniform * (e_exact + e_noisy)
    assert on_exact == pytest.approx(noisy_err / (100 * e_exact + e_noisy), rel=1e-9)


def test_requantizing_a_q4_k_tensor_to_q5_0_costs_a_finite_positive_error(tiny_q4k: Path) -> None:
    from ggprec.proxy import tensor_error

    e = tensor_error(tiny_q4k, None, TENSOR, "q5_0")
    assert math.isfinite(e) and e > 0


def test_quantized_bytes_are_those_llama_model_quantize_wrote(tiny_model: Path, tiny_q4k: Path) -> None:
    from ggprec.proxy import quantize_rows

    src, out = read_gguf(tiny_model).tensor(TENSOR), read_gguf(tiny_q4k).tensor(TENSOR)
    assert src is not None and out is not None and out.type.name == "q4_k"
    x = np.fromfile(tiny_model, dtype=np.float16, count=src.n_elements, offset=src.offset)
    rows = x.astype(np.float32).reshape(src.shape[1], src.shape[0])
    written = np.fromfile(tiny_q4k, dtype=np.uint8, count=out.n_bytes, offset=out.offset).tobytes()
    assert quantize_rows("q4_k", rows) == written


def test_a_block_that_does_not_divide_the_rows_is_measured_at_llama_cpps_fallback(tmp_path: Path) -> None:
    from ggprec.proxy import error_table

    path = write_synth(tmp_path / "rows288.gguf", shape_for("tiny", n_embd=288, n_head=2, n_head_kv=1))
    table = error_table(path, None, ["q4_k", "q5_0"], threads=2, tensors=[TENSOR])
    q4k = table.errors[TENSOR]["q4_k"]
    assert q4k.written == "q5_0"  # llama.cpp's tensor_type_fallback for q4_k on rows of 288
    assert q4k.error == table.error(TENSOR, "q5_0")


def test_big_tensors_are_sampled_deterministically_and_say_so(tiny_model: Path) -> None:
    from ggprec.proxy import error_table

    a = error_table(tiny_model, None, ["q4_0"], threads=2, max_rows=64, tensors=["token_embd.weight"])
    b = error_table(tiny_model, None, ["q4_0"], threads=1, max_rows=64, tensors=["token_embd.weight"])
    e = a.errors["token_embd.weight"]["q4_0"]
    assert (e.rows, e.total_rows, e.sampled) == (64, 1024, True)
    assert e.error == b.errors["token_embd.weight"]["q4_0"].error
    assert "sampled" in a.describe()


def test_expert_tensors_take_one_weight_row_per_expert(tiny_moe: Path) -> None:
    from ggprec.proxy import error_table

    info = read_gguf(tiny_moe)
    exps = next(t for t in info.tensors if t.name.endswith("ffn_up_exps.weight"))
    n_in, _, n_exp = exps.shape
    w = np.ones((n_exp, n_in), dtype=np.float32)
    w[1] = 50.0  # a heavier expert: the same relative error, so the figure stays near the uniform one
    weighted = error_table(tiny_moe, info, ["q4_0"], StandIn({exps.name: w}), threads=2, tensors=[exps.name])
    uniform = error_table(tiny_moe, info, ["q4_0"], threads=2, tensors=[exps.name])
    e = weighted.errors[exps.name]["q4_0"]
    assert e.weighted and e.rows == e.total_rows == exps.shape[1] * n_exp
    assert e.error == pytest.approx(uniform.error(exps.name, "q4_0"), rel=0.2)
    with pytest.raises(GgprecError, match="expert slices x input columns"):
        error_table(tiny_moe, info, ["q4_0"], StandIn({exps.name: w[:1]}), tensors=[exps.name])


def test_a_type_that_needs_an_importance_matrix_is_left_out_without_one(tiny_model: Path) -> None:
    from ggprec.proxy import error_table

    table = error_table(tiny_model, None, ["iq2_xs", "q4_0"], threads=2, tensors=[TENSOR])
    assert table.error(TENSOR, "iq2_xs") is None and table.error(TENSOR, "q4_0") is not None
    assert any("iq2_xs" in n for n in table.notes)
    with_imx = error_table(tiny_model, None, ["iq2_xs"], StandIn({TENSOR: np.ones((1, 256), np.float32)}),
                           threads=2, tensors=[TENSOR])
    assert with_imx.error(TENSOR, "iq2_xs") > table.error(TENSOR, "q4_0")


def test_table_round_trips_through_a_dict(tiny_model: Path) -> None:
    from ggprec.proxy import ErrorTable, error_table

    table = error_table(tiny_model, None, ["q4_0", "q8_0"], threads=2, tensors=[TENSOR])
    assert ErrorTable.from_dict(table.to_dict()) == table


def _table_with(errors: dict[str, float], candidate: str = "q4_0"):
    from ggprec.proxy import ErrorTable, TensorError

    return ErrorTable("m.gguf", [candidate], {n: {candidate: TensorError(e, candidate, 1, 1, False)}
                                              for n, e in errors.items()}, "uniform", None)


def test_fit_recovers_per_role_constants_and_the_global_one_for_roles_without_a_pass(tiny_model: Path) -> None:
    from ggprec.proxy import FitPass, ProxyFit

    info = read_gguf(tiny_model)
    q = {f"blk.{i}.attn_q.weight": 0.01 * (i + 1) for i in range(2)}
    v = {f"blk.{i}.attn_v.weight": 0.02 for i in range(2)}
    table = _table_with({**q, **v, "blk.0.ffn_up.weight": 0.03, "token_embd.weight": 0.005})
    passes = [FitPass("q", dict.fromkeys(q, "q4_0"), 2.0 * 0.03), FitPass("v", dict.fromkeys(v, "q4_0"), 5.0 * 0.04)]
    fit = ProxyFit.fit(table, info, passes)
    assert fit.scale == pytest.approx({"attn_q": 2.0, "attn_v": 5.0})
    assert fit.default_scale == pytest.approx(math.sqrt(2.0 * 5.0))  # geometric mean: least squares in logs
    assert fit.source == "proxy: fitted on 2 passes"
    assert fit.tensor_kld(table, info, "blk.0.ffn_up.weight", "q4_0") == pytest.approx(0.03 * math.sqrt(10.0))
    assert fit.tensor_kld(table, info, "token_embd.weight", "q4_0") == pytest.approx(0.005 * math.sqrt(10.0))


def test_passes_at_two_types_separate_the_error_scale_from_the_activation_floor(tiny_model: Path) -> None:
    # KLD = 3 x error + 0.002 for quantizing all of attn_q's activations (both attn_q tensors of the 2 layers).
    from ggprec.proxy import ErrorTable, FitPass, ProxyFit, TensorError

    info = read_gguf(tiny_model)
    q = [f"blk.{i}.attn_q.weight" for i in range(2)]
    errs = {"q4_0": 0.007, "q8_0": 0.00003}
    table = ErrorTable("m.gguf", list(errs), {n: {c: TensorError(e, c, 1, 1, False) for c, e in errs.items()}
                                              for n in q}, "uniform", None)
    passes = [FitPass(c, dict.fromkeys(q, c), 3.0 * 2 * e + 0.002) for c, e in errs.items()]
    fit = ProxyFit.fit(table, info, passes)
    assert fit.scale["attn_q"] == pytest.approx(3.0) and fit.floor["attn_q"] == pytest.approx(0.002)
    assert fit.tensor_kld(table, info, q[0], "q8_0") == pytest.approx(3.0 * 0.00003 + 0.001)
    assert fit.residual == pytest.approx(0.0, abs=1e-9)


def test_a_whole_model_pass_separates_the_change_floor_paid_once_from_each_roles_cost(tiny_model: Path) -> None:
    # KLD = 0.004 once for changing anything + 2 x attn_q's error + 5 x attn_v's: each role alone and both.
    from ggprec.proxy import FitPass, ProxyFit

    info = read_gguf(tiny_model)
    q = {f"blk.{i}.attn_q.weight": 0.01 for i in range(2)}
    v = {f"blk.{i}.attn_v.weight": 0.03 for i in range(2)}
    table = _table_with({**q, **v})
    passes = [FitPass("q", dict.fromkeys(q, "q4_0"), 0.004 + 2.0 * 0.02),
              FitPass("v", dict.fromkeys(v, "q4_0"), 0.004 + 5.0 * 0.06),
              FitPass("all", dict.fromkeys([*q, *v], "q4_0"), 0.004 + 2.0 * 0.02 + 5.0 * 0.06)]
    fit = ProxyFit.fit(table, info, passes)
    assert fit.change_floor == pytest.approx(0.004)
    assert fit.scale == pytest.approx({"attn_q": 2.0, "attn_v": 5.0})
    assert fit.tensor_kld(table, info, "blk.0.attn_v.weight", "q4_0") == pytest.approx(0.15)  # no floor in it
    assert fit.predict(table, info, dict.fromkeys([*q, *v], "q4_0")) == pytest.approx(0.344)  # paid once
    assert ProxyFit.from_dict(fit.to_dict()) == fit


def test_a_fit_without_passes_is_refused_in_one_line(tiny_model: Path) -> None:
    from ggprec.proxy import ProxyFit

    with pytest.raises(GgprecError, match="no evaluation pass"):
        ProxyFit.fit(_table_with({TENSOR: 0.01}), read_gguf(tiny_model), [])


def test_prior_scaling_adds_up_to_the_whole_model_prior(tiny_model: Path) -> None:
    from ggprec.priors import weight_prior
    from ggprec.proxy import ProxyFit, error_table, proxy_tensors

    info = read_gguf(tiny_model)
    table = error_table(tiny_model, info, ["q4_0"], threads=2)
    fit = ProxyFit.from_prior(table, info, "q4_0")
    n_params = sum(t.n_elements for t in proxy_tensors(info))
    assert fit.group_kld(table, info, list(table.errors), "q4_0") == pytest.approx(weight_prior("q4_0", n_params).kld)
    assert fit.source.startswith("prior: ") and fit.n_passes == 0


def _cli(*args: str):
    from click.testing import CliRunner

    from ggprec.cli import main

    return CliRunner().invoke(main, ["sensitivity", *args])


def test_cli_proxy_fits_once_then_uses_the_stored_fit(tiny_model: Path, tmp_path: Path) -> None:
    import json

    db = str(tmp_path / "h.db")
    base = [str(tiny_model), "--proxy", "--groups", "role", "--also", "q8_0", "--json", "--db", db]
    before = json.loads(_cli(*base).stdout)
    assert before["source"].startswith("prior: ")
    fitted = _cli(*base, "--fit", "--ctx", "128", "--chunks", "2")
    assert fitted.exit_code == 0, fitted.output
    doc = json.loads(fitted.stdout)
    assert doc["source"] == "proxy: fitted on 17 passes" and doc["fit_id"] is not None
    again = json.loads(_cli(*base).stdout)
    assert again["fit_id"] == doc["fit_id"] and again["source"] == doc["source"]
    for g in again["groups"]:
        assert g["source"] == doc["source"] and g["kld_at"]["q8_0"] < g["kld_at"]["q4_0"]
    assert again["ranking"][0] == "token_embd"  # the tied head: the most damaging group per unit of error


def test_cli_bad_imatrix_is_one_line_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    res = _cli(str(tiny_model), "--proxy", "--imatrix", str(tmp_path / "missing.gguf"))
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("ggprec: error: ")


def test_bytes_with_an_importance_matrix_are_those_llama_model_quantize_wrote(tiny_model: Path, tiny_imatrix_file: Path,
                                                                               tmp_path: Path) -> None:
    from ggprec import imatrix_file
    from ggprec.plan import resolve_plan
    from ggprec.profile import Profile
    from ggprec.proxy import load_imatrix, quantize_rows
    from ggprec.quantize import quantize

    info = read_gguf(tiny_model)
    imx_path = tiny_imatrix_file
    imx = load_imatrix(imx_path, info)
    out = quantize(tiny_model, resolve_plan(info, Profile("q4k", default="q4_k")), tmp_path / "q4k-imx.gguf",
                   threads=2, imatrix_path=imx_path, imatrix=imatrix_file.read_imatrix(imx_path))
    src, written = info.tensor(TENSOR), read_gguf(out).tensor(TENSOR)
    assert src is not None and written is not None
    rows = np.fromfile(tiny_model, dtype=np.float16, count=src.n_elements, offset=src.offset)
    rows = rows.astype(np.float32).reshape(src.shape[1], src.shape[0])
    data = np.fromfile(out, dtype=np.uint8, count=written.n_bytes, offset=written.offset).tobytes()
    weights = imx.column_weights(TENSOR)[0]
    assert quantize_rows("q4_k", rows, weights) == data
    assert quantize_rows("q4_k", rows) != data  # the importance matrix did change the bytes


def test_cli_proxy_reads_an_importance_matrix_file(tiny_model: Path, tiny_imatrix_file: Path, tmp_path: Path) -> None:
    import json

    imx_path = tiny_imatrix_file
    res = _cli(str(tiny_model), "--proxy", "--imatrix", str(imx_path), "--json", "--db", str(tmp_path / "h.db"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["weighting"] == "imatrix" and all(g["kld"] > 0 for g in doc["groups"])


def test_recommend_proxy_fits_once_says_so_first_then_reads_the_stored_fit(tiny_model: Path, tmp_path: Path) -> None:
    from ggprec.proxy import fit_pass_plan, recommend_proxy

    info = read_gguf(tiny_model)
    db = tmp_path / "h.db"
    told: list[str] = []
    first = recommend_proxy(tiny_model, info, ["q8_0", "q4_0"], db=db, notice=told.append)
    assert first is not None and first.fitted_now and first.fit_id is not None
    n = len(fit_pass_plan(info))
    assert n == 17 and len(told) == 1 and f"{n} passes" in told[0] and "the whole model" in told[0]
    assert first.source == f"proxy: fitted on {n} passes"
    again = recommend_proxy(tiny_model, info, ["q8_0", "q4_0"], db=db, notice=told.append)
    assert again is not None and not again.fitted_now and again.fit_id == first.fit_id and len(told) == 1
    assert again.tensor_kld(TENSOR, "q4_0") == first.tensor_kld(TENSOR, "q4_0")  # the cached error table
    assert recommend_proxy(tiny_model, info, ["q4_0"], mode="prior", db=db) is None


def test_a_sparse_file_gets_the_priors_under_auto_and_one_line_under_proxy(tmp_path: Path) -> None:
    from ggprec.proxy import recommend_proxy

    path = write_synth(tmp_path / "sparse.gguf", PRESETS["tiny"], sparse=True)
    info = read_gguf(path)
    assert recommend_proxy(path, info, ["q4_0"], db=tmp_path / "h.db") is None
    with pytest.raises(GgprecError, match="needs the model's weights on disk"):
        recommend_proxy(path, info, ["q4_0"], mode="proxy", db=tmp_path / "h.db")


def test_auto_leaves_a_large_model_unfitted_and_says_how_to_fit_it(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ggprec.proxy import estimate, recommend_proxy

    monkeypatch.setattr(estimate, "AUTO_FIT_BYTES", 0)  # the tiny model stands in for one above the limit
    told: list[str] = []
    got = recommend_proxy(tiny_model, read_gguf(tiny_model), ["q4_0"], db=tmp_path / "h.db", notice=told.append)
    assert got is not None and got.fit.n_passes == 0 and got.source.startswith("prior: ")
    assert len(told) == 1 and "`--loss proxy` fits it once (17 passes" in told[0]
