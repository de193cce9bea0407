"""Speed and memory of a model under given runtime settings, measured the way llama-bench does.

After loading and one warm-up of each kind:
- prompt processing (pp): `pp` token ids decoded as one batch (split in n_batch pieces when larger);
- generation (tg): `tg` single-token decodes after a short prefix;
each repeated `reps` times with the KV cache cleared in between, reported as tokens per second
(median, min, max, stdev). Token ids are fed directly: no tokenization or sampling is timed.
The batch is filled through llama-cpp-python's raw `llama_batch`/`llama_decode`, so the Python
between two decodes is a few attribute stores (scripts/bench_run_overhead.py checks the cost).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .alloc import Allocation, allocation_from_log
from .errors import GgprecError
from .llama_backend import LoadedModel, load_model
from .settings import RuntimeSettings
from .speed import PP_TOKENS, TG_PREFIX, decode_cells

GEN_TOKENS = 32  # tokens generated for --prompt
SEED = 1234  # token ids of the timed batches are drawn from the vocabulary with this seed


@dataclass
class Stats:
    """Tokens per second over the repetitions."""

    median: float
    min: float
    max: float
    stdev: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        return cls(statistics.median(samples), min(samples), max(samples),
                   statistics.stdev(samples) if len(samples) > 1 else 0.0, samples)


@dataclass
class RunResult:
    model_path: str
    settings: RuntimeSettings  # as applied (threads resolved, -ngl clamped)
    pp: int
    tg: int
    reps: int
    pp_tps: Stats | None  # None when pp == 0
    tg_tps: Stats | None  # None when tg == 0
    load_s: float
    allocation: Allocation
    peak_rss_bytes: int
    gpu_memory_bytes: int | None  # None without an NVIDIA GPU
    n_layer: int
    notices: list[str] = field(default_factory=list)
    prompt: str | None = None
    generated: str | None = None
    predicted: dict[str, int] | None = None  # ggprec.memory's prediction, keyed like allocation.buffers
    expected_tg_tps: float | None = None  # ggprec.speed's expectation for this file and these settings
    expected_pp_tps: float | None = None  # None where the speed model has no pp figures
    expected_tg_source: str | None = None  # where the speed model's figures come from
    depth: int = 0  # tokens in the KV cache before the timed decodes (0: the short TG_PREFIX)
    # Predicted bytes of model:CPU_Mapped that are evictable page cache (offloaded or repacked tensors).
    predicted_evictable: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        d["settings"]["flash_attn_effective"] = self.settings.flash_attn_effective
        d["allocation"] = self.allocation.to_dict()
        return d


class Decoder:
    """One reusable llama_batch on a context: decode runs of token ids at given positions."""

    def __init__(self, lm: LoadedModel) -> None:
        from .llama_bindings import load
        llama_cpp = load()

        self._llama = llama_cpp
        self.ctx = lm.ctx
        self.n_batch = lm.settings.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.memory = llama_cpp.llama_get_memory(lm.ctx)

    def close(self) -> None:
        self._llama.llama_batch_free(self.batch)

    def decode(self, tokens: list[int], pos0: int) -> None:
        """Decode `tokens` at positions pos0... (n_batch at a time), logits for the last one only."""
        b = self.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos0 + start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 0
            b.logits[len(chunk) - 1] = 1
            b.n_tokens = len(chunk)
            self._check(self._llama.llama_decode(self.ctx, b))

    def prepare_step(self) -> None:
        """Set the batch up for single-token decodes (time_tg then writes only token and position)."""
        b = self.batch
        b.n_tokens = 1
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1

    def sync(self) -> None:
        self._llama.llama_synchronize(self.ctx)

    def clear(self) -> None:
        self._llama.llama_memory_clear(self.memory, True)

    @staticmethod
    def _check(rc: int) -> None:
        if rc != 0:
            raise GgprecError(f"llama_decode failed (code {rc})")


def time_pp(dec: Decoder, tokens: list[int]) -> float:
    """Seconds to decode `tokens` as a prompt into an empty cache."""
    dec.clear()
    t0 = time.perf_counter()
    dec.decode(tokens, 0)
    dec.sync()
    return time.perf_counter() - t0


def time_tg(dec: Decoder, prefix: list[int], tokens: list[int]) -> float:
    """Seconds for len(tokens) single-token decodes after `prefix` (decoded untimed)."""
    dec.clear()
    dec.decode(prefix, 0)
    dec.prepare_step()
    # The timed loop holds only what a bare llama-cpp-python loop does per token: two stores into the
    # batch and the decode call; the names are bound once here, the return codes checked after timing.
    decode, ctx, batch = dec._llama.llama_decode, dec.ctx, dec.batch
    token, pos = batch.token, batch.pos
    failed = 0
    t0 = time.perf_counter()
    for p, tok in enumerate(tokens, len(prefix)):
        token[0] = tok
        pos[0] = p
        failed |= decode(ctx, batch)
    dec.sync()
    elapsed = time.perf_counter() - t0
    dec._check(failed)
    return elapsed


def peak_rss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _check_sizes(settings: RuntimeSettings, pp: int, tg: int, reps: int, depth: int = 0) -> None:
    if pp < 0 or tg < 0 or reps < 1 or pp + tg == 0 or depth < 0:
        raise GgprecError(f"need pp >= 0, tg >= 0, one of them > 0, reps >= 1, depth >= 0 (got pp {pp}, tg {tg}, "
                          f"reps {reps}, depth {depth})")
    prefix = max(depth, TG_PREFIX)
    if pp > settings.n_ctx or (tg and prefix + tg > settings.n_ctx):
        raise GgprecError(f"context {settings.n_ctx} too small for --pp {pp} / --tg {tg} "
                          f"(needs pp and {prefix} + tg tokens); raise -c")


def run_benchmark(model_path: str | os.PathLike[str], settings: RuntimeSettings, pp: int = 512, tg: int = 128,
                  reps: int = 3, prompt: str | None = None,
                  progress: Callable[[str], None] | None = None, n_predict: int = GEN_TOKENS,
                  speed_model: Any = None, depth: int = 0) -> RunResult:
    """Load the model with `settings`, measure pp and tg tok/s (`reps` times each), report memory;
    with `prompt`, also generate up to `n_predict` tokens of text from it (untimed). tg is timed after
    `depth` tokens in the KV cache (llama-bench's -d; 0: a short prefix of TG_PREFIX), decoded untimed. The
    expected speed beside it comes from `speed_model` (a ggprec.speed.SpeedModel, e.g.
    calibrate.speed_model_for(); None: no expectation).
    With RPC servers every server is probed first, and the run happens in a child process (llama.cpp
    aborts the process when a peer dies): an abort is one GgprecError here."""
    _check_sizes(settings, pp, tg, reps, depth)
    if settings.rpc_servers:
        from . import rpc

        rpc.require_rpc()
        rpc.probe_all(settings.rpc_servers)
        return rpc.isolated(_run_here, model_path, settings, pp, tg, reps, prompt, n_predict=n_predict,
                            speed_model=speed_model, depth=depth, servers=settings.rpc_servers,
                            progress=progress)
    return _run_here(model_path, settings, pp, tg, reps, prompt, report=progress, n_predict=n_predict,
                     speed_model=speed_model, depth=depth)


def _run_here(model_path: str | os.PathLike[str], settings: RuntimeSettings, pp: int, tg: int, reps: int,
              prompt: str | None, report: Callable[[str], None] | None, n_predict: int,
              speed_model: Any, depth: int = 0) -> RunResult:
    from .llama_bindings import load
    llama_cpp = load()

    progress = report

    from .hardware import gpu_memory_used_bytes

    say = progress or (lambda _msg: None)
    prefix = max(depth, TG_PREFIX)
    say("loading")
    with load_model(model_path, settings) as lm:
        allocation = allocation_from_log(lm.log, model_bytes=llama_cpp.llama_model_size(lm.model))
        predicted: dict[str, int] | None = None
        evictable: int | None = None
        try:
            prediction = predict_memory(lm)
            predicted, evictable = prediction.buffers, prediction.evictable
        except GgprecError as e:  # a model the memory model cannot describe still runs
            lm.notices.append(f"no memory prediction: {e}")
        if lm.devices is not None:
            lm.notices.append(layer_notice(lm))
        rng = random.Random(SEED)
        ids = [rng.randrange(lm.n_vocab) for _ in range(max(pp, prefix + tg))]
        dec = Decoder(lm)
        try:
            say("warm-up")
            if pp:
                time_pp(dec, ids[:min(pp, lm.settings.n_batch)])
            if tg:
                time_tg(dec, ids[:prefix], ids[prefix:prefix + 1])
            pp_s, tg_s = [], []
            for rep in range(reps):
                if pp:
                    say(f"pp {pp}, rep {rep + 1}/{reps}")
                    pp_s.append(pp / time_pp(dec, ids[:pp]))
                if tg:
                    say(f"tg {tg}, rep {rep + 1}/{reps}")
                    tg_s.append(tg / time_tg(dec, ids[:prefix], ids[prefix:prefix + tg]))
            generated = None
            if prompt is not None:
                say("generating")
                generated = generate(lm, dec, prompt, n_predict)
        finally:
            dec.close()
        gpu_bytes = gpu_memory_used_bytes()
        expected = expected_speed(lm, tg, speed_model, depth, pp)
        return RunResult(str(model_path), lm.settings, pp, tg, reps, Stats.of(pp_s) if pp_s else None,
                         Stats.of(tg_s) if tg_s else None, lm.load_s, allocation, peak_rss_bytes(), gpu_bytes,
                         lm.n_layer, lm.notices, prompt, generated, predicted,
                         None if expected is None else expected.tg_tps, None if expected is None else expected.pp_tps,
                         None if expected is None else expected.source, depth, evictable)


def expected_speed(lm: LoadedModel, tg: int, speed_model: Any = None, depth: int = 0, pp: int = 0) -> Any:
    """ggprec.speed's expected tok/s for what `lm` is (its file, the settings as applied), with the KV
    cells the timed decodes use on average and the prompt length timed (0: speed.PP_TOKENS); None for a
    model the speed model cannot describe. Split over several devices: each device's reads at its rate and
    each RPC hop (speed.expected_split)."""
    if speed_model is None:
        return None
    try:
        return speed_model.expected(lm.info, lm.settings, kv_cells=decode_cells(depth, tg), pp_tokens=pp or PP_TOKENS,
                                    devices=lm.devices)
    except (GgprecError, ValueError, KeyError) as e:
        lm.notices.append(f"no speed expectation: {e}")
        return None


def predict_memory(lm: LoadedModel) -> Any:
    """ggprec.memory's prediction for what `lm` is: the file that was loaded (its own tensor types), the
    settings as applied (-ngl clamped, threads resolved, and the batch sizes llama.cpp's context really
    uses: it caps n_batch at the context size), mmap'd unless it was a no_alloc load."""
    from .llama_bindings import load
    llama_cpp = load()

    from .memory import predict

    settings = lm.settings.with_overrides(n_batch=llama_cpp.llama_n_batch(lm.ctx),
                                          n_ubatch=llama_cpp.llama_n_ubatch(lm.ctx))
    return predict(lm.info, settings, mmap=not lm.no_alloc, devices=lm.devices)


def layer_notice(lm: LoadedModel) -> str:
    """Which layers each device holds (llama.cpp's split rule, as layer_split predicts it)."""
    from .device_plan import layer_ranges
    from .layer_split import layer_devices

    layers = layer_devices(lm.n_layer, lm.settings.n_gpu_layers, lm.devices or [], lm.settings.tensor_split)
    parts = [f"{device} {layer_ranges([il for il, d in enumerate(layers) if d == device], lm.n_layer)}"
             for device in dict.fromkeys(layers)]
    return "layers: " + "; ".join(parts)


def tokenize(lm: LoadedModel, text: str) -> list[int]:
    from .llama_bindings import load
    llama_cpp = load()

    vocab = llama_cpp.llama_model_get_vocab(lm.model)
    raw = text.encode("utf-8")
    buf = (llama_cpp.llama_token * (len(raw) + 8))()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    if n < 0:
        raise GgprecError("prompt could not be tokenized")
    return list(buf[:n])


def generate(lm: LoadedModel, dec: Decoder, prompt: str, n_tokens: int) -> str:
    """Greedy continuation of `prompt` (most likely token each step), stopping at end of generation."""
    from .llama_bindings import load
    llama_cpp = load()
    import numpy as np

    vocab = llama_cpp.llama_model_get_vocab(lm.model)
    tokens = tokenize(lm, prompt)
    if not tokens:
        raise GgprecError("the prompt is empty after tokenization")
    if len(tokens) + n_tokens > lm.settings.n_ctx:
        raise GgprecError(f"prompt of {len(tokens)} tokens does not fit the context {lm.settings.n_ctx}")
    dec.clear()
    dec.decode(tokens, 0)
    out = bytearray()
    piece = (llama_cpp.ctypes.c_char * 64)()
    for i in range(n_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lm.ctx, -1), shape=(lm.n_vocab,))
        tok = int(np.argmax(logits))
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        n = llama_cpp.llama_token_to_piece(vocab, tok, piece, len(piece), 0, False)
        out += bytes(piece[:max(n, 0)])
        dec.decode([tok], len(tokens) + i)
    return out.decode("utf-8", "replace")


@dataclass
class ProfileRun:
    """A run of `source` as a profile makes it: the result, the file that ran, and the profile."""

    source: str
    ran: str  # the variant file built from the profile, or the source itself without a profile
    profile: Any  # ggprec.profile.Profile or None
    result: RunResult


def resolve_settings(profile: Any, overrides: dict[str, Any]) -> RuntimeSettings:
    """The profile's runtime settings (defaults without one) with the CLI's overrides; `flash_attn`
    "auto" (None) is an override too: it gives the choice back to the V-cache rule."""
    base = profile.runtime if profile is not None else RuntimeSettings()
    fa = overrides.pop("flash_attn", "keep")
    settings = base.with_overrides(**overrides)
    if fa != "keep":
        from dataclasses import replace

        settings = replace(settings, flash_attn=fa)
    return settings


def run_with_profile(model: str | os.PathLike[str], profile_name: str | None, overrides: dict[str, Any],
                     pp: int = 512, tg: int = 128, reps: int = 3, prompt: str | None = None,
                     progress: Callable[[str], None] | None = None, n_predict: int = GEN_TOKENS,
                     speed_model: Any = None, depth: int = 0) -> ProfileRun:
    """`ggprec run`: load the profile, build (or reuse) its variant of `model`, run it with the profile's
    settings and the overrides."""
    from pathlib import Path

    if not Path(model).is_file():
        raise GgprecError(f"{model}: no such file")
    profile = None
    ran: str | os.PathLike[str] = model
    if profile_name is not None:
        from .profile import load_profile
        from .quantize import build_variant

        profile = load_profile(profile_name)
    settings = resolve_settings(profile, dict(overrides))
    if profile is not None:
        from .llama_backend import check_settings

        check_settings(settings)  # before a possibly long quantization
        if progress:
            progress(f"building the {profile.name} variant (cached after the first time)")
        ran = build_variant(model, profile, threads=settings.n_threads)
    result = run_benchmark(ran, settings, pp=pp, tg=tg, reps=reps, prompt=prompt, progress=progress,
                           n_predict=n_predict, speed_model=speed_model, depth=depth)
    return ProfileRun(str(model), str(ran), profile, result)
