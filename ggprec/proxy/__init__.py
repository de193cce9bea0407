"""A per-tensor error proxy measured on the weights as they are in the file, and its map to expected KLD.

For one tensor and one candidate type: read the tensor's rows from the GGUF file, dequantize them with
ggml's own `to_float` for the file's type (what llama.cpp's quantizer does before it requantizes),
quantize them to the candidate with `ggml_quantize_chunk` (the very function llama_model_quantize
calls: same bytes, with the importance matrix's column weights when there are some), dequantize
again, and take the squared error weighted per input column by the importance matrix (uniformly
without one), relative to the weighted energy of the file's rows:

    error = sum_rows sum_cols w[col] (x - q(x))^2 / sum_rows sum_cols w[col] x^2

With w the mean squared activation of each input column, the numerator is the expected squared error
of the matmul's output and the denominator its expected energy: a noise-to-signal ratio of the layer.
The type a tensor already has costs exactly 0.0: llama.cpp's quantizer copies a tensor whose target
type is its own type byte for byte (`quantize = cur_type != new_type` in src/llama-quant.cpp), so that
is no measurement but the fact, and tensor_error short-circuits it. Requantizing (q4_k -> q5_0)
costs what it costs: the reference is the file's own values, not an f16 original the file never had.

No inference, no file written: the proxy streams through the file in row chunks (bounded memory
whatever the tensor's size) on a thread pool (ctypes releases the GIL in the ggml calls and numpy in
its reductions). Large tensors are sampled: at most `max_rows` rows per tensor (per expert slice for
3-D expert tensors), taken evenly spaced (deterministic; every head and every expert is covered); each
TensorError says how many rows it measured.

Public API (stable; recommend's loss model consumes it):

- `ColumnWeights` (Protocol): any object with `column_weights(name) -> ndarray[n_mat, n_in] | None`
  (`ggprec.imatrix_file.Imatrix` is one): per weight, the mean squared activation of each input column,
  one row per expert slice (n_mat = 1 for a 2-D weight); None or KeyError for a weight it has no entry
  for (then that tensor is measured and quantized without one, as llama.cpp does). `load_imatrix(path,
  info)` reads a file through ggprec.imatrix_file (one line when that module is absent).
- Module `table` (measure stack: ggml): `tensor_error(path, info, tensor, candidate, imatrix=None,
  max_rows=MAX_ROWS) -> float`: the error of asking llama.cpp for `candidate` on `tensor` (a TensorInfo or
  its name). A candidate whose block does not divide the rows is measured at the type llama.cpp falls back
  to (`plan.fallback`); a tensor llama.cpp never quantizes costs 0.0 (it keeps its type).
- `error_table(path, info, candidates, imatrix=None, threads=None, progress=None, max_rows=MAX_ROWS,
  tensors=None) -> ErrorTable`: every quantizable tensor (or `tensors`) x every candidate in one
  streaming pass (each chunk of rows is read and dequantized once for all candidates).
  `ErrorTable.errors[tensor][candidate] -> TensorError(error, written, rows, total_rows, weighted)`;
  `.error(tensor, candidate) -> float | None` (None: not measured, e.g. an IQ type without an imatrix);
  `.group_error(tensors, candidate)`; `.to_dict()`, `ErrorTable.from_dict(d)`.
- `ProxyFit` (module `fit`: arithmetic only): the proxy mapped to expected KLD, `KLD(assignment) =
  change_floor (once, if any tensor changes) + sum over tensors of c[role] x error(tensor, type) +
  floor[role] / n_role` (floor: where a float tensor becomes a quantized type, llama.cpp also quantizes that
  matmul's activations to 8 bits; change_floor: on a quantized source any change costs a fixed amount once,
  see ProxyFit), constants per role (the tied head is a role of its own) and a global scale for roles
  without a pass of their own, fitted by non-negative least squares on relative residuals on N real
  evaluation passes (`ProxyFit.fit(table, info, passes: list[FitPass])`), or scaled to the priors when
  the model cannot run here (`ProxyFit.from_prior(table, info, type)`). `.source`: `proxy: fitted on N
  passes` or `prior: <source>`; `.tensor_kld(table, info, tensor, type)` (the floor paid once is not in
  it), `.group_kld(table, info, tensors, type)`, `.predict(table, info, {tensor: type})`;
  `.to_dict()`/`from_dict`.
- Module `passes` (measure stack): `fit_pass_plan(info)` (each role alone at q4_0 and q8_0, then the whole
  model at q8_0: 16 passes on the real models here, 17 on an f16 model), `describe_fit_passes(todo)`,
  `run_fit_passes(model, info, ..., imatrix_path=None) -> list[FitPass]` (llama.cpp quantizes, with the
  importance matrix when one is given; ggprec.evaluate measures KLD against the model, FIT_WINDOWS
  windows); `stored_passes(model, db, imatrix_path)`: passes `ggprec sensitivity` already stored for this
  model (against itself); the history kind `proxy-fit` (written by `history.save_proxy_fit`):
  `find_fit(model, weighting, imatrix_path, db)`, `model_fit(...)` (stored fit, else the prior spread by
  the proxy).
- Module `estimate` (what recommend uses): `recommend_proxy(model, info, candidates, imatrix_path, mode,
  db, notice) -> FittedProxy | None` (mode auto/proxy/prior: the cached error table of the candidates
  (`cached_error_table`), the stored fit or one fitted now and stored, said through `notice` before the
  passes run; None for the priors); `FittedProxy(table, info, fit)` is `recommend.loss.ProxyEstimate`
  (`source`, `change_floor`, `tensor_kld(tensor, type)`): values handed down to the predict stack.
- Module `ranking`: `proxy_sensitivity(model, ...) -> ProxySensitivity`: `ggprec sensitivity --proxy`, every
  group's expected KLD from one streaming pass, with its source; `render`.
"""

from .estimate import LOSS_MODES, FittedProxy, cached_error_table, recommend_proxy
from .fit import FitPass, ProxyFit, changes, fit_role, quantizes_activations, role_counts
from .passes import (
    FIT_TYPES,
    FIT_WINDOWS,
    WHOLE_TYPES,
    describe_fit_passes,
    find_fit,
    fit_pass_plan,
    model_fit,
    run_fit_passes,
    stored_passes,
)
from .ranking import ProxyGroup, ProxySensitivity, proxy_sensitivity, render
from .table import (
    CHUNK_ELEMENTS,
    MAX_ROWS,
    QUANTIZABLE_TO,
    ColumnWeights,
    ErrorTable,
    TensorError,
    candidate_type,
    error_table,
    load_imatrix,
    proxy_tensors,
    quantize_rows,
    requires_imatrix,
    sample_rows,
    tensor_error,
    written_type,
)

__all__ = [
    "CHUNK_ELEMENTS", "ColumnWeights", "ErrorTable", "FIT_TYPES", "FIT_WINDOWS", "FitPass", "FittedProxy",
    "LOSS_MODES", "MAX_ROWS", "ProxyFit", "ProxyGroup", "ProxySensitivity", "QUANTIZABLE_TO", "TensorError",
    "WHOLE_TYPES", "cached_error_table", "candidate_type", "changes", "describe_fit_passes", "error_table",
    "find_fit", "fit_pass_plan", "fit_role", "load_imatrix", "model_fit", "proxy_sensitivity", "proxy_tensors",
    "quantize_rows", "quantizes_activations", "recommend_proxy", "render", "requires_imatrix", "role_counts",
    "run_fit_passes", "sample_rows", "stored_passes", "tensor_error", "written_type",
]
