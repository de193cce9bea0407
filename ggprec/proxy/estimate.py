"""The error proxy fitted to the model at hand, for recommend (measure stack): the error table of the
candidate types (cached on disk), the stored fit of this model, or one fitted now on real passes and kept.
recommend receives the result as values (`FittedProxy` is a `recommend.loss.ProxyEstimate`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GgprecError
from ..gguf_info import ModelInfo
from ..history import save_proxy_fit
from ..progress import Progress
from ..store import Store
from .fit import ProxyFit, role_counts
from .passes import FIT_FORM, describe_fit_passes, find_fit, fit_pass_plan, run_fit_passes
from .table import MAX_ROWS, ErrorTable, error_table, load_imatrix

TABLE_CACHE_FORMAT = 1
LOSS_MODES = ("auto", "proxy", "prior")  # recommend --loss
# Under `auto`, a fit is made without being asked only for files up to this size: the passes quantize and
# evaluate the model 16 times (about a minute for the 135M-270M models here on 2 cores, growing with the
# size: roughly ten minutes at 1 GiB). Larger models get the prior spread by the proxy until `--loss proxy`.
AUTO_FIT_BYTES = 1 << 30


@dataclass
class FittedProxy:
    """An error table and the fit that maps it to expected KLD, bound to one model: what recommend prices
    unmeasured tensors with (recommend.loss.ProxyEstimate)."""

    table: ErrorTable
    info: ModelInfo
    fit: ProxyFit
    fit_id: int | None = None  # the history row of the fit
    fitted_now: bool = False
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def source(self) -> str:
        return self.fit.source

    @property
    def change_floor(self) -> float:
        return self.fit.change_floor

    def tensor_kld(self, tensor: str, candidate: str) -> float | None:
        if not self._counts:
            self._counts = role_counts(self.info)
        return self.fit.tensor_kld(self.table, self.info, tensor, candidate, self._counts)

    def describe(self) -> str:
        where = f"history #{self.fit_id}" if self.fit_id is not None else "not stored"
        when = "fitted now" if self.fitted_now else "stored fit"
        return (f"{self.source} ({when}, {where}; change floor {self.change_floor:.4f}, rms log error "
                f"{self.fit.residual or 0:.2f}); errors: {self.table.describe()}")


def cached_error_table(model: str | os.PathLike[str], info: ModelInfo, candidates: Sequence[str],
                       imatrix_path: str | os.PathLike[str] | None = None, threads: int | None = None,
                       progress: Progress | None = None, max_rows: int | None = MAX_ROWS) -> ErrorTable:
    """error_table of the model at these candidates (weighted by and quantized with the importance matrix
    where one is given), kept in `cache_dir()/proxy-errors` by model sha256, candidates, importance matrix,
    rows and llama-cpp-python version (ggml's quantizers are what is measured)."""
    from ..llama_bindings import load
    llama_cpp = load()

    from ..demo_model import cache_dir
    from ..fileio import atomic_write_text
    from ..hashing import model_sha256

    key = json.dumps([model_sha256(model), sorted(candidates), None if imatrix_path is None else
                      model_sha256(imatrix_path), max_rows, llama_cpp.__version__, TABLE_CACHE_FORMAT])
    path = cache_dir() / "proxy-errors" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        return ErrorTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not there yet, or unreadable: measured again
    imatrix = None if imatrix_path is None else load_imatrix(imatrix_path, info)
    table = error_table(model, info, candidates, imatrix, threads, progress, max_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table.to_dict()))
    return table


def recommend_proxy(model: str | os.PathLike[str], info: ModelInfo, candidates: Sequence[str],
                    imatrix_path: str | os.PathLike[str] | None = None, mode: str = "auto",
                    db: str | os.PathLike[str] | None = None, notice: Callable[[str], None] | None = None,
                    progress: Progress | None = None, threads: int = 2) -> FittedProxy | None:
    """The proxy recommend prices with, or None for the priors. mode `prior`: None. `auto`: None when the
    file cannot be evaluated here (a sparse shape, or llama.cpp refuses it); `proxy`: that is an error.
    Otherwise: the error table of `candidates` (cached), and the newest stored fit of this model and
    weighting, else a fit made now on the passes of fit_pass_plan (said through `notice` before they run)
    and stored in the history; under `auto` a file above AUTO_FIT_BYTES is not fitted unasked (the prior
    spread by the proxy, and the notice says how to fit it)."""
    from ..kv_loss import runnable_here

    if mode not in LOSS_MODES:
        raise GgprecError(f"loss must be one of {', '.join(LOSS_MODES)}, not '{mode}'")
    if mode == "prior":
        return None
    if not runnable_here(Path(model)):
        if mode == "proxy":
            raise GgprecError(f"{model}: the error proxy needs the model's weights on disk (a sparse or unreadable "
                              "file cannot be measured): use the priors")
        return None
    table = cached_error_table(model, info, candidates, imatrix_path, threads, progress)
    found = find_fit(model, table.weighting, imatrix_path, db)
    if found is not None:
        return FittedProxy(table, info, found[0], found[1])
    todo = fit_pass_plan(info)
    if mode == "auto" and Path(model).stat().st_size > AUTO_FIT_BYTES:
        if notice:
            notice(f"no fit of the error proxy for this model yet: the prior spread by it; `--loss proxy` fits it "
                   f"once ({describe_fit_passes(todo)})")
        return FittedProxy(table, info, ProxyFit.from_prior(table, info, "q4_0"))
    if notice:
        notice(f"fitting the error proxy to this model once (kept in the history): {describe_fit_passes(todo)}")
    passes = run_fit_passes(model, info, threads=threads, progress=progress, imatrix_path=imatrix_path)
    fit = ProxyFit.fit(table, info, passes)
    with Store(db) as store:
        fit_id = save_proxy_fit(store, fit, model, "q4_0", table.max_rows, imatrix_path, FIT_FORM)
    return FittedProxy(table, info, fit, fit_id, fitted_now=True)
