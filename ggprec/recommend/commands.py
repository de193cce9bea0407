"""The plan in llama.cpp's own terms: the `llama-quantize` line with a `--tensor-type-file`, and the
`llama-server` / `llama-cli` flags that load the result as planned.

The tensor-type file (tools/quantize/quantize.cpp, `--tensor-type-file`): whitespace-separated
`pattern=type` entries; each pattern is a regex searched in the tensor name, the first match wins, and it
applies only when the base type (the positional ftype) is a quantized one. So every weight gets one anchored
line (`^blk\\.0\\.attn_q\\.weight$=q4_K`) and the ftype is always quantized (Q8_0 when the plan's most
common type is not), which makes the ftype's own mix logic apply to nothing.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..device_plan import server_lines
from ..settings import ALL_LAYERS
from ..tensor_overrides import anchored  # the exact pattern ggprec's own quantize passes to llama.cpp

# llama-quantize's ftype names for a plan whose most common type is the key (QUANT_OPTIONS in quantize.cpp).
FTYPE_OF: dict[str, str] = {
    "q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k": "Q5_K_S", "q5_1": "Q5_1", "q5_0": "Q5_0", "q4_k": "Q4_K_S",
    "q4_1": "Q4_1", "q4_0": "Q4_0", "q3_k": "Q3_K_S", "q2_k": "Q2_K", "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS",
    "iq3_s": "IQ3_S", "iq3_xxs": "IQ3_XXS", "iq2_s": "IQ2_S", "iq2_xs": "IQ2_XS", "iq2_xxs": "IQ2_XXS",
}
FALLBACK_FTYPE = "Q8_0"  # a quantized base type, so that the file's patterns apply to every tensor


@dataclass(frozen=True)
class LlamaCommands:
    tensor_type_lines: tuple[str, ...]  # one anchored `pattern=type` per weight
    tensor_type_file: str  # where the lines are (to be) written
    quantize: str  # "" where the plan keeps every weight as the source has it: nothing to quantize
    server: str
    cli: str
    hosts: tuple[str, ...] = ()  # a split over RPC servers: the server to start on each host (device_plan)

    def tensor_type_text(self) -> str:
        return "\n".join(self.tensor_type_lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensor_type_lines"] = len(self.tensor_type_lines)
        return d


def llama_type_name(name: str) -> str:
    """ggml's own spelling (ggml_type_name): k-quants end in a capital K."""
    return name[:-2] + "_K" if name.endswith("_k") else name


def tensor_type_file_for(profile_path: str | Path) -> Path:
    """The tensor-type file written next to a profile: plan.yaml -> plan.tensor-types.txt."""
    p = Path(profile_path)
    return p.with_name(p.stem + ".tensor-types.txt")


def llama_commands(rec: Any, info: Any, tensor_type_file: str | Path | None = None,
                   output_model: str | None = None) -> LlamaCommands:
    """What a user of plain llama.cpp runs for this recommendation (rec: a Recommendation; info: the
    source's ModelInfo): `llama-quantize` (with `--imatrix FILE` where rec.imatrix is set; none at all where
    the plan keeps the model as it is, which then runs the source itself) and the run flags."""
    from ..plan import quantizable

    source = str(info.path)
    out = output_model or str(Path(source).with_name(Path(source).stem + "-ggprec.gguf"))
    ttf = str(tensor_type_file or tensor_type_file_for(Path(source).with_suffix(".yaml")))
    lines = []
    requantize = False
    changed = False
    for t in info.tensors:
        if not quantizable(t.name, t.shape):
            continue
        chosen = rec.tensor_types.get(t.name, t.type.name)
        requantize |= t.type.name not in ("f32", "f16", "bf16")
        changed |= chosen != t.type.name
        lines.append(f"{anchored(t.name)}={llama_type_name(chosen)}")
    hosts = tuple(server_lines(rec.settings.rpc_servers))
    if not changed:  # the model as it is: run the source
        run = _run_flags(rec, source)
        return LlamaCommands(tuple(lines), ttf, "", shlex.join(["llama-server", *run]),
                             shlex.join(["llama-cli", *run]), hosts)
    counts: dict[str, int] = {}
    for v in rec.tensor_types.values():
        counts[v] = counts.get(v, 0) + 1
    common = max(counts, key=lambda k: counts[k]) if counts else ""
    ftype = FTYPE_OF.get(common, FALLBACK_FTYPE)
    imatrix = getattr(rec, "imatrix", None)
    q = ["llama-quantize", *(["--allow-requantize"] if requantize else []),
         *(["--imatrix", str(imatrix)] if imatrix else []), "--tensor-type-file", ttf, source, out, ftype]
    run = _run_flags(rec, out)
    return LlamaCommands(tuple(lines), ttf, shlex.join(q), shlex.join(["llama-server", *run]),
                         shlex.join(["llama-cli", *run]), hosts)


def _run_flags(rec: Any, model: str) -> list[str]:
    s = rec.settings
    flags = ["-m", model, "-c", str(s.n_ctx), "-ngl", str(s.n_gpu_layers), "-ctk", s.cache_type_k,
             "-ctv", s.cache_type_v, "-fa", "on" if s.flash_attn_effective else "off"]
    if s.rpc_servers:  # a split: llama.cpp offloads to the servers' devices, then the local GPU (-ts in that order)
        flags += ["--rpc", ",".join(s.rpc_servers)]
        if s.tensor_split:
            flags += ["-ts", ",".join(f"{x:g}" for x in s.tensor_split)]
    if s.override_tensor:
        flags += ["-ot", ",".join(f"{pattern}={device}" for pattern, device in s.override_tensor)]
    if s.n_cpu_moe == ALL_LAYERS:
        flags += ["--cpu-moe"]
    elif s.n_cpu_moe:
        flags += ["--n-cpu-moe", str(s.n_cpu_moe)]
    return flags
