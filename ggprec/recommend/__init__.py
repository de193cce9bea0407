"""`ggprec recommend`: the plans that fit a GPU and RAM budget, as a quality/speed front, and the one the goal
picks, in ggprec's and llama.cpp's own terms.

One home per concept: `groups` (what takes one type), `loss` (expected KLD per group and type: measured,
proxy or prior; a quantized tensor only ever kept or made smaller), `knapsack` (types per group under a byte
budget), `search` (placements and their sweeps), `frontier` (the Pareto front and the rules that pick a row;
for an already-quantized source the model as it is stays the default unless a change buys a stated gain),
`api` (recommend() and the Recommendation), `commands` (llama-quantize / llama-server lines), `render` (the
terminal output). Other areas' modules it uses: `priors`
(loss priors), `speed` (expected tok/s), `tensor_overrides` (where each tensor lives), `memory` (buffers)."""

from ..units import GIB, MIB
from .api import (
    NoFitError,
    Recommendation,
    SizedPlan,
    check_imatrix_file,
    recommend,
    recommend_for_size,
    system_ram_gib,
    to_profile,
    validate,
)
from .frontier import AS_IS_MIN_SPEEDUP, BALANCED_MIN_TPS, GOALS, KLD_FLOOR, FrontRow, as_is_row
from .groups import Group, layer_bands, make_groups, quantizable
from .knapsack import Option, Solution, options_for, solve
from .loss import (
    CANDIDATE_TYPES,
    IMATRIX_TYPES,
    KV_TYPES,
    PRIOR_IMPORTANCE,
    REQUANT_SOURCE_WEIGHT,
    UNCHANGED,
    LossModel,
    PriorTensorLoss,
    ProxyEstimate,
    ProxyTensorLoss,
    TensorLoss,
    prior_loss_model,
    proxy_tensor_loss,
    sensitivity_loss_model,
    stored_sensitivity,
)

__all__ = [
    "AS_IS_MIN_SPEEDUP", "BALANCED_MIN_TPS", "CANDIDATE_TYPES", "GIB", "GOALS", "IMATRIX_TYPES", "KLD_FLOOR",
    "KV_TYPES", "MIB", "PRIOR_IMPORTANCE", "REQUANT_SOURCE_WEIGHT", "UNCHANGED",
    "FrontRow", "Group", "LossModel", "NoFitError", "Option", "PriorTensorLoss", "ProxyEstimate", "ProxyTensorLoss",
    "Recommendation", "SizedPlan", "Solution", "TensorLoss", "as_is_row", "check_imatrix_file",
    "layer_bands", "make_groups", "options_for", "prior_loss_model", "proxy_tensor_loss", "quantizable", "recommend",
    "recommend_for_size", "sensitivity_loss_model", "solve", "stored_sensitivity",
    "system_ram_gib",
    "to_profile", "validate",
]
