"""What an evaluation measured (`eval --json`, docs/json.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

EVAL_SCHEMA = 1  # version of the `eval --json` document


@dataclass(frozen=True)
class EvalResult:
    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_max: float
    kld_mean_se: float
    top1: float  # fraction of scored positions where both models' most probable token is the same
    top1_se: float
    ppl: float  # candidate
    ppl_se: float
    ppl_ref: float
    ppl_ref_se: float
    ppl_ratio: float  # ppl / ppl_ref
    ppl_ratio_se: float
    n_tokens: int  # scored positions
    n_chunks: int  # windows of n_ctx tokens
    # Filled by evaluate(): where the figures came from.
    candidate: str = ""
    reference: str = ""
    n_ctx: int = 0
    text_sha256: str = ""
    reference_cached: bool = False  # True when the reference's log-probs came from the disk cache
    schema: int = EVAL_SCHEMA  # a field, so EvalResult(**to_dict()) rebuilds a stored result

    def to_dict(self) -> dict[str, Any]:
        """The `eval --json` document (docs/json.md)."""
        return asdict(self)
