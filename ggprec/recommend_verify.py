"""Checking a recommendation with llama.cpp (measure stack): quantize the chosen plan, measure its KLD beside
the predicted one (the CLI keeps the recommendation in the history: `history.save_recommendation`).
`ggprec.recommend` predicts; this measures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .recommend import Recommendation, to_profile
from .settings import RuntimeSettings


def verify(rec: Recommendation, source: str, reference: str | None = None, chunks: int | None = 4,
           n_ctx: int = 512, threads: int = 2) -> dict[str, Any]:
    """Quantize the recommended plan with llama.cpp (with rec.imatrix where one is given) and measure its KLD
    against the reference (default: the source itself); returns predicted beside measured, and their ratio
    (measured / predicted; None where 0 was predicted). A plan that keeps every weight is the source itself:
    nothing is written."""
    from .evaluate import evaluate

    variant = Path(source) if rec.as_is else _build(rec, source, threads)
    settings = RuntimeSettings(n_threads=threads, cache_type_k=rec.settings.cache_type_k,
                               cache_type_v=rec.settings.cache_type_v)
    result = evaluate(variant, reference or source, n_ctx=n_ctx, chunks=chunks, settings=settings)
    measured = result.kld_mean
    return {"variant": str(variant), "file_bytes": variant.stat().st_size, "predicted_kld": rec.expected_kld,
            "measured_kld": measured, "measured_top1": result.top1,
            "ratio": measured / rec.expected_kld if rec.expected_kld > 0 else None,
            "loss_source": rec.loss_source, "as_is": rec.as_is, "imatrix": rec.imatrix}


def _build(rec: Recommendation, source: str, threads: int) -> Path:
    """The plan's file, built once (quantize.build_variant; the profile carries rec.imatrix)."""
    from .quantize import build_variant

    return build_variant(source, to_profile(rec, name="recommended"), threads=threads)
