"""`ggprec recommend`: the plans that fit a GPU and RAM budget, as a quality/speed front, and the one the goal
picks, in ggprec's and llama.cpp's own terms.

One home per concept: `groups` (what takes one type), `loss` (expected KLD per group and type: measured or
prior), `knapsack` (types per group under a byte budget), `search` (placements and their sweeps), `frontier`
(the Pareto front and the rules that pick a row), `api` (recommend() and the Recommendation), `commands`
(llama-quantize / llama-server lines), `render` (the terminal output). Other areas' modules it uses: `priors`
(loss priors), `speed` (expected tok/s), `tensor_overrides` (where each tensor lives), `memory` (buffers)."""

from ..units import GIB, MIB
from .api import (
    NoFitError,
    Recommendation,
    SizedPlan,
    recommend,
    recommend_for_size,
    record_recommendation,
    system_ram_gib,
    to_profile,
    validate,
    verify,
)
from .frontier import BALANCED_MIN_TPS, GOALS, KLD_FLOOR, FrontRow
from .groups import Group, layer_bands, make_groups, quantizable
from .knapsack import Option, Solution, options_for, solve
from .loss import (
    CANDIDATE_TYPES,
    KV_TYPES,
    PRIOR_IMPORTANCE,
    LossModel,
    prior_loss_model,
    sensitivity_loss_model,
    stored_sensitivity,
)

__all__ = [
    "BALANCED_MIN_TPS", "CANDIDATE_TYPES", "GIB", "GOALS", "KLD_FLOOR", "KV_TYPES", "MIB", "PRIOR_IMPORTANCE",
    "FrontRow", "Group", "LossModel", "NoFitError", "Option", "Recommendation", "SizedPlan", "Solution",
    "layer_bands", "make_groups", "options_for", "prior_loss_model", "quantizable", "recommend",
    "recommend_for_size", "record_recommendation", "sensitivity_loss_model", "solve", "stored_sensitivity",
    "system_ram_gib",
    "to_profile", "validate", "verify",
]
