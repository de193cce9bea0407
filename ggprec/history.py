"""What each command keeps in the history, and how: the one place results are stored.

Library calls (evaluate, run_with_profile, compare, measure_sensitivity, recommend + verify,
calibrate) return their results and store nothing; the CLI hands each result to one `save_*` function
here, with an open `store.Store`. The one library caller is the proxy fit, which the history also serves
as a cache (`save_proxy_fit`: recommend fits once and finds it again). Each function builds the typed
record (ggprec.records), the settings the row is found by and the hardware fingerprint, the same way for
every kind. `store` is the SQLite layer underneath."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calibrate import Calibration
    from .compare import Comparison
    from .evaluate import EvalResult
    from .proxy import ProxyFit
    from .recommend import Recommendation
    from .runner import ProfileRun
    from .sensitivity import SensitivityResult
    from .store import Store

# Device fields of a run's settings kept beside an evaluation (what makes it comparable).
DEVICE_KEYS = ("n_gpu_layers", "rpc_servers", "tensor_split", "devices")


def _hardware() -> dict[str, Any]:
    from .hardware import fingerprint

    return fingerprint()


def _sha(path: str) -> str:
    from .hashing import model_sha256

    return model_sha256(path)


def text_key(text: str | None) -> str:
    """How a row names its evaluation text: the sha256 of a given text, "default" for the shipped one."""
    return hashlib.sha256(text.encode()).hexdigest() if text else "default"


def imatrix_key(imatrix_path: str | os.PathLike[str] | None) -> str | None:
    """How a row names the importance matrix its quantizations used: its sha256 (None: without one)."""
    return None if imatrix_path is None else _sha(str(imatrix_path))


def save_run(store: Store, run: ProfileRun, hardware: dict[str, Any] | None = None) -> int:
    """One `ggprec run` (kind run); the row's settings are the ones applied (flash_attn_effective included).
    hardware: the fingerprint when the caller already took it (run's JSON prints it too)."""
    from .records import RunRecord

    p = run.profile
    return store.record(RunRecord.from_run(run), model_path=run.source, model_sha256=_sha(run.source),
                        profile_name=p.name if p else None, profile_hash=p.content_hash() if p else None,
                        settings=run.result.to_dict()["settings"], hardware=hardware or _hardware())


def save_eval(store: Store, result: EvalResult, model: str, settings: dict[str, Any], chunks: int | None) -> int:
    """One `ggprec eval` (kind eval); `settings`: the candidate's RuntimeSettings as a dict, `chunks` as asked
    (None: the whole text)."""
    from .records import EvalRecord

    devices = {k: v for k, v in settings.items() if k in DEVICE_KEYS and v}
    return store.record(EvalRecord.from_result(result), model_path=model, model_sha256=_sha(model),
                        settings={"n_ctx": result.n_ctx, "chunks": chunks,
                                  "n_threads": settings.get("n_threads"), **devices},
                        hardware=_hardware())


def save_comparison(store: Store, result: Comparison) -> list[int]:
    """One row per profile (kind compare), all sharing the comparison's settings; the row's model is the
    source, as for `run` (the variant that ran is the record's `path`). All rows or none: a signal waits until
    they are written."""
    from .interrupts import deferred

    settings = {**result.settings, "source": result.source, "reference": result.reference,
                "baseline": result.baseline}
    hardware, source_sha = _hardware(), _sha(result.source)
    with deferred():
        result.history_ids = [
            store.record(r, model_path=result.source, model_sha256=source_sha, profile_name=r.profile,
                         profile_hash=result.profile_hashes.get(r.profile), settings={**settings, "runtime": r.runtime},
                         hardware=hardware)
            for r in result.records]
    return result.history_ids


def save_sensitivity(store: Store, res: SensitivityResult, text: str | None = None,
                     imatrix_path: str | None = None) -> int:
    """One `ggprec sensitivity` (kind sensitivity, keyed by the model's sha256: recommend finds it there);
    imatrix_path: the importance matrix its passes were quantized with (kept as its sha256)."""
    from .records import SensitivityRecord

    settings = {"probe_type": res.probe_type, "also": res.also, "also_grouping": res.also_grouping,
                "grouping": res.grouping, "n_ctx": res.n_ctx, "chunks": res.chunks, "reference": res.reference,
                "text_sha256": text_key(text), "imatrix_sha256": imatrix_key(imatrix_path)}
    res.record_id = store.record(SensitivityRecord.from_dict(res.to_dict()), model_path=res.model,
                                 model_sha256=_sha(res.model), settings=settings, hardware=_hardware())
    return res.record_id


def save_recommendation(store: Store, rec: Recommendation, verified: dict[str, Any] | None = None,
                        profile: str | None = None) -> int:
    """The chosen plan (kind recommend). The model is kept by path only: hashing a sparse 70B shape would take
    minutes for a command that otherwise takes a second."""
    from .records import RecommendRecord

    s = rec.settings
    record = RecommendRecord(
        goal=rec.goal, vram_bytes=rec.vram, ram_bytes=rec.ram, n_ctx=s.n_ctx, n_gpu_layers=s.n_gpu_layers,
        cache_type_k=s.cache_type_k, cache_type_v=s.cache_type_v, weights_bytes=rec.weights_bytes,
        gpu_bytes=rec.gpu_total, host_bytes=rec.host_total, expected_kld=rec.expected_kld,
        measured_kld=None if verified is None else verified["measured_kld"], expected_tg_tps=rec.tg_tps,
        loss_source=rec.loss_source, tensor_types=dict(rec.tensor_types), profile=profile)
    return store.record(record, model_path=rec.model, settings={"margin_bytes": rec.margin, **s.to_dict()},
                        hardware=_hardware())


def save_calibration(store: Store, cal: Calibration) -> int:
    """One `ggprec calibrate` (kind calibration), found again by this machine's key (calibrate.machine_key);
    sets the calibration's id and created time and labels its speeds with them; returns the id."""
    from .calibrate import HOST, machine_key
    from .records import CalibrationRecord

    hw = _hardware()
    settings = {"n_threads": cal.n_threads, **cal.effort, "types": sorted(cal.speeds[HOST].gbps),
                "machine_key": machine_key(hw)}
    doc = {k: v for k, v in cal.to_dict().items() if k not in ("id", "created")}
    cal.id = store.record(CalibrationRecord.from_dict(doc), model_path=None, model_sha256=None, profile_name=None,
                          profile_hash=None, settings=settings, hardware=hw)
    cal.created = store.query(kind="calibration", limit=1)[0].created
    cal.label_sources()
    return cal.id


def save_proxy_fit(store: Store, fit: ProxyFit, model: str | os.PathLike[str], probe_type: str,
                   max_rows: int | None, imatrix_path: str | os.PathLike[str] | None, form: str) -> int:
    """A fit of the error proxy to measured passes (kind proxy-fit), keyed by the model's sha256 and found
    again by its weighting, importance matrix and form (proxy.find_fit: rows of another form are not
    read); returns the row id."""
    from .records import ProxyFitRecord

    imx_sha = imatrix_key(imatrix_path)
    doc = fit.to_dict()
    rec = ProxyFitRecord(scale=doc["scale"], default_scale=doc["default_scale"], n_passes=doc["n_passes"],
                         weighting=doc["weighting"], imatrix=None if imatrix_path is None else str(imatrix_path),
                         imatrix_sha256=imx_sha, probe_type=probe_type, residual=doc["residual"],
                         passes=doc["passes"], prior_source=doc["prior_source"], source=doc["source"],
                         max_rows=max_rows, floor=doc["floor"], change_floor=doc["change_floor"])
    return store.record(rec, model_path=model, model_sha256=_sha(str(model)),
                        settings={"weighting": fit.weighting, "imatrix_sha256": imx_sha, "probe_type": probe_type,
                                  "form": form},
                        hardware=_hardware())
