"""Precision profiles: reusable recipes saying which ggml type each tensor gets, plus KV-cache types and
runtime settings. A profile is a YAML file (format reference: docs/profiles.md) or a Profile built in
Python; `ggprec.plan.resolve_plan` applies one to a model.

Rules are ordered, the first that matches a tensor wins; a rule selects by a regex over the whole
tensor name (anchored: `output\\.weight` never matches `blk.3.attn_output.weight`) and/or by role with
an optional layer selector. Quantizable tensors no rule names get the profile's default type.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import ggml_types
from .errors import GgprecError
from .roles import ROLE_ORDER
from .settings import DEVICE_FIELDS, RuntimeSettings

SHIPPED_DIR = Path(__file__).parent / "profiles"

_TOP_KEYS = ("name", "description", "default", "rules", "split_output", "imatrix", "kv_cache", "runtime")
_RULE_KEYS = ("match", "role", "layers", "type")
_KV_KEYS = ("k", "v")
_RUNTIME_KEYS = tuple(f.name for f in fields(RuntimeSettings)
                      if f.name not in ("cache_type_k", "cache_type_v", *DEVICE_FIELDS))
_PLACEMENT_KEYS = ("override_tensor", "n_cpu_moe")
_LAYER_SPEC = re.compile(r"^\s*(?:(first|last)\s+(\d+)|(\d+(?:\s*-\s*\d+)?(?:\s*,\s*\d+(?:\s*-\s*\d+)?)*))\s*$")


def _type_name(value: Any, where: str) -> str:
    """A weight type's canonical name (aliases like int8 resolved), or a GgprecError naming `where`."""
    try:
        return ggml_types.weight_type(str(value)).name
    except ggml_types.UnknownTypeError as e:
        if str(value).strip().lower() in (*ggml_types.BY_NAME, *ggml_types.ALIASES):
            raise GgprecError(f"{where}: {e}") from None
        # Suggest among the types a profile can name, not every ggml type (q8_O -> q8_0, not q8_k).
        names = [t.name for t in ggml_types.TYPES if t.weight]
        names += [a for a, t in ggml_types.ALIASES.items() if t in names]
        near = difflib.get_close_matches(str(value).strip().lower(), names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (one of: {', '.join(names)})"
        raise GgprecError(f"{where}: unknown ggml type '{value}'{hint}") from None


def _role_names(raw: Any) -> tuple[str, ...]:
    """A rule's roles as a tuple of names: one name or a list of names, nothing else."""
    items = [raw] if isinstance(raw, str) else raw if isinstance(raw, (list, tuple)) else None
    if items is None or not all(isinstance(r, str) for r in items):
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "..."
        raise GgprecError(f"'role' must be a role name or a list of role names, got {shown}")
    return tuple(items)


def _unknown_key(key: str, allowed: tuple[str, ...], where: str) -> GgprecError:
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else f" (allowed: {', '.join(allowed)})"
    return GgprecError(f"{where}: unknown key '{key}'{hint}")


# Layer numbers a selector may name. llama.cpp itself stops at LLAMA_MAX_LAYERS = 512; a bound far above
# it refuses typos like '0-3000000' at once instead of walking millions of layers for every tensor.
MAX_LAYER = 4095


@functools.lru_cache(maxsize=256)
def _layer_spec(spec: str) -> tuple[str, int] | tuple[tuple[int, int], ...]:
    """A selector parsed once: ('first'|'last', n) or the (lo, hi) ranges it lists, never expanded."""
    m = _LAYER_SPEC.match(spec)
    if not m:
        raise GgprecError(f"invalid layer selector '{spec}' (use 'first N', 'last N' or '0-3,7')")
    if m.group(1):
        return m.group(1), _layer_number(m.group(2), spec, count=True)
    ranges = []
    for part in m.group(3).split(","):
        lo, _, hi = part.partition("-")
        a = _layer_number(lo, spec)
        b = _layer_number(hi, spec) if hi else a
        if b < a:
            raise GgprecError(f"invalid layer range '{part.strip()}' in '{spec}'")
        ranges.append((a, b))
    return tuple(ranges)


def _layer_number(digits: str, spec: str, count: bool = False) -> int:
    digits = digits.strip()
    n = int(digits) if len(digits) <= 9 else MAX_LAYER + 1  # no int() of a thousand-digit string
    if not count and n > MAX_LAYER:
        raise GgprecError(f"layer {digits[:12]}{'...' if len(digits) > 12 else ''} in '{spec[:40]}' is beyond any "
                          f"model (layer numbers go up to {MAX_LAYER})")
    return n


def _layer_selected(spec: str, layer: int, n_layer: int) -> bool:
    parsed = _layer_spec(spec)
    if parsed and isinstance(parsed[0], str):
        which, n = parsed
        return 0 <= layer < n_layer and (layer < n if which == "first" else layer >= n_layer - n)
    return 0 <= layer < n_layer and any(a <= layer <= b for a, b in parsed)  # type: ignore[misc]


def parse_layers(spec: str, n_layer: int) -> frozenset[int]:
    """Layers of a model with n_layer layers named by a selector: 'first N', 'last N', or indices and
    ranges like '0-3,7' (layers the model does not have are left out)."""
    return frozenset(i for i in range(n_layer) if _layer_selected(spec, i, n_layer))


@dataclass(frozen=True)
class Rule:
    """Tensors selected by `match` (regex over the whole name) and/or `roles` (+ `layers`) get `type`."""

    type: str
    match: str | None = None
    roles: tuple[str, ...] = ()
    layers: str | None = None  # 'first N', 'last N', '0-3,7'; resolved against the model's n_layer

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", _role_names(self.roles))  # first: describe() joins them
        object.__setattr__(self, "type", _type_name(self.type, f"rule {self.describe()}"))
        if self.match is None and not self.roles:
            raise GgprecError("rule needs 'match' (a regex) or 'role'")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as e:
                raise GgprecError(f"rule {self.describe()}: invalid regex '{self.match}': {e}") from None
        for role in self.roles:
            if role not in ROLE_ORDER:
                near = difflib.get_close_matches(role, ROLE_ORDER, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else f" (one of: {', '.join(ROLE_ORDER)})"
                raise GgprecError(f"rule {self.describe()}: unknown role '{role}'{hint}")
        if self.layers is not None:
            object.__setattr__(self, "layers", str(self.layers))
            _layer_spec(self.layers)  # syntax and bounds now; the layers themselves need the model

    @classmethod
    def exact(cls, tensor_name: str, type: str) -> Rule:
        """A rule for exactly one tensor (what recommend/sensitivity build per-tensor plans from)."""
        return cls(type=type, match=re.escape(tensor_name))

    def describe(self) -> str:
        parts = []
        if self.match is not None:
            parts.append(f"match '{self.match}'")
        if self.roles:
            parts.append("role " + ",".join(self.roles))
        if self.layers is not None:
            parts.append(f"layers {self.layers}")
        return " ".join(parts) or "(empty)"

    def selects(self, name: str, role: str, layer: int | None, n_layer: int) -> bool:
        if self.match is not None and re.fullmatch(self.match, name) is None:
            return False
        if self.roles and role not in self.roles:
            return False
        if self.layers is not None:
            return layer is not None and _layer_selected(self.layers, layer, n_layer)
        return True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.match is not None:
            d["match"] = self.match
        if self.roles:
            d["role"] = self.roles[0] if len(self.roles) == 1 else list(self.roles)
        if self.layers is not None:
            d["layers"] = self.layers
        d["type"] = self.type
        return d


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    rules: tuple[Rule, ...] = ()
    default: str = "q8_0"  # type of every quantizable tensor no rule names
    split_output: str | None = None  # type of a separate output.weight split off a tied token_embd
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    imatrix: str | None = None  # importance-matrix file the quantizer weighs rounding errors with

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", _type_name(self.default, f"profile {self.name}: default"))
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.split_output is not None:
            split = _type_name(self.split_output, f"profile {self.name}: split_output")
            object.__setattr__(self, "split_output", split)
        object.__setattr__(self, "runtime", _check_runtime(self.runtime, self.name))

    def to_dict(self) -> dict[str, Any]:
        rt = self.runtime
        d: dict[str, Any] = {"name": self.name, "description": self.description, "default": self.default,
                             "rules": [r.to_dict() for r in self.rules]}
        if self.split_output is not None:
            d["split_output"] = self.split_output
        if self.imatrix is not None:  # only when set, so profiles without one keep their content hash
            d["imatrix"] = self.imatrix
        d["kv_cache"] = {"k": rt.cache_type_k, "v": rt.cache_type_v}
        d["runtime"] = {k: getattr(rt, k) for k in _RUNTIME_KEYS if k not in _PLACEMENT_KEYS}
        # Placement keys only when set, so profiles without them keep their content hash.
        if rt.override_tensor:
            d["runtime"]["override_tensor"] = [{"pattern": p, "device": dv} for p, dv in rt.override_tensor]
        if rt.n_cpu_moe:
            d["runtime"]["n_cpu_moe"] = rt.n_cpu_moe
        return d

    def content_hash(self) -> str:
        """sha256 of what the profile decides (its name and description left out)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _check_runtime(rt: RuntimeSettings, name: str) -> RuntimeSettings:
    """The settings with KV types in llama.cpp's spelling; reject what llama.cpp would refuse."""
    canonical = {}
    for which in ("k", "v"):
        try:
            canonical[f"cache_type_{which}"] = ggml_types.kv_cache_type(str(getattr(rt, f"cache_type_{which}"))).name
        except ggml_types.UnknownTypeError as e:
            raise GgprecError(f"profile {name}: kv_cache.{which}: {e}") from None
    rt = replace(rt, **canonical)
    if ggml_types.lookup(rt.cache_type_v).quantized and rt.flash_attn is False:
        raise GgprecError(f"profile {name}: a quantized V cache ({rt.cache_type_v}) needs flash attention; "
                          "set runtime.flash_attn to true")
    return rt


def _rule_from_yaml(raw: Any, i: int) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(raw, dict):
        raise GgprecError(f"{where}: expected a mapping with 'type' and 'match' or 'role'")
    for key in raw:
        if key not in _RULE_KEYS:
            raise _unknown_key(str(key), _RULE_KEYS, where)
    if "type" not in raw:
        raise GgprecError(f"{where}: missing 'type'")
    for key in ("match", "layers", "type"):
        if isinstance(raw.get(key), (dict, list)):
            raise GgprecError(f"{where}: '{key}' must be a single value, not a {type(raw[key]).__name__}")
    try:
        return Rule(type=str(raw["type"]), match=None if raw.get("match") is None else str(raw["match"]),
                    roles=raw.get("role", ()), layers=None if raw.get("layers") is None else str(raw["layers"]))
    except GgprecError as e:
        raise GgprecError(f"{where}: {e}") from None


def _override_tensor(raw: Any) -> tuple[tuple[str, str], ...]:
    """runtime.override_tensor: a list of {pattern, device} mappings, in llama.cpp's -ot order."""
    from .tensor_overrides import check_pattern

    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise GgprecError("runtime.override_tensor: expected a list of {pattern, device}")
    out = []
    for i, item in enumerate(raw):
        if not (isinstance(item, dict) and set(item) == {"pattern", "device"}
                and all(isinstance(v, str) and v for v in item.values())):
            raise GgprecError(f"runtime.override_tensor[{i}]: expected {{pattern: REGEX, device: NAME}}")
        out.append((check_pattern(item["pattern"]), item["device"]))
    return tuple(out)


def profile_from_dict(doc: Any, default_name: str = "profile") -> Profile:
    """Validate a parsed YAML document into a Profile; every problem is a one-line GgprecError."""
    if not isinstance(doc, dict):
        raise GgprecError("a profile must be a YAML mapping")
    for key in doc:
        if key not in _TOP_KEYS:
            raise _unknown_key(str(key), _TOP_KEYS, "profile")
    name = str(doc.get("name", default_name))
    rules_raw = doc.get("rules") or []
    if not isinstance(rules_raw, list):
        raise GgprecError("rules: expected a list")
    rules = tuple(_rule_from_yaml(r, i) for i, r in enumerate(rules_raw))
    kv = doc.get("kv_cache") or {}
    runtime = doc.get("runtime") or {}
    for section, raw, allowed in (("kv_cache", kv, _KV_KEYS), ("runtime", runtime, _RUNTIME_KEYS)):
        if not isinstance(raw, dict):
            raise GgprecError(f"{section}: expected a mapping")
        for key in raw:
            if key not in allowed:
                raise _unknown_key(str(key), allowed, section)
    runtime = {**runtime, "override_tensor": _override_tensor(runtime.get("override_tensor"))}
    try:
        settings = RuntimeSettings(**runtime, cache_type_k=str(kv.get("k", "f16")),
                                   cache_type_v=str(kv.get("v", "f16")))
    except TypeError as e:
        raise GgprecError(f"runtime: {e}") from None
    for key, value in runtime.items():
        if key == "override_tensor":
            continue
        ok = isinstance(value, bool) if key == "flash_attn" else isinstance(value, int) and not isinstance(value, bool)
        if not (ok or value is None):
            raise GgprecError(f"runtime.{key}: expected {'true/false' if key == 'flash_attn' else 'an integer'}, "
                              f"got {value!r}")
    from .tensor_overrides import override_list

    override_list(settings)  # n_cpu_moe below -1 or too many overrides: a one-line error now, not at load
    split = doc.get("split_output")
    imatrix = doc.get("imatrix")
    if imatrix is not None and not (isinstance(imatrix, str) and imatrix):
        raise GgprecError(f"imatrix: expected the path of an importance-matrix file, got {imatrix!r}")
    return Profile(name=name, description=str(doc.get("description", "")), rules=rules,
                   default=str(doc.get("default", "q8_0")), split_output=None if split is None else str(split),
                   runtime=settings, imatrix=imatrix)


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (e.g. 'mixed') or a YAML file by path."""
    import yaml

    path = Path(name_or_path)
    shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")) and shipped.is_file():
            path = shipped
        else:
            names = [p.stem for p in sorted(SHIPPED_DIR.glob("*.yaml"))]
            near = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (shipped: {', '.join(names)})"
            raise GgprecError(f"no profile named or at '{name_or_path}'{hint}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise GgprecError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GgprecError(f"{path}: cannot read ({e})") from None
    try:
        profile = profile_from_dict(doc, default_name=path.stem)
    except GgprecError as e:
        raise GgprecError(f"{path}: {e}") from None
    if profile.imatrix is not None and not Path(profile.imatrix).is_absolute():
        # a relative imatrix path is relative to the profile file, like any path inside a config file
        profile = replace(profile, imatrix=str(path.parent / profile.imatrix))
    return profile


def shipped_profiles() -> list[Profile]:
    return [load_profile(str(p)) for p in sorted(SHIPPED_DIR.glob("*.yaml"))]


def profile_to_yaml(profile: Profile) -> str:
    """YAML text that load_profile reads back into an equal Profile."""
    import yaml

    return yaml.safe_dump(profile.to_dict(), sort_keys=False, default_flow_style=False)
