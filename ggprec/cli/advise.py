"""Commands that choose a plan: recommend, sensitivity."""

from __future__ import annotations

import click

from .distributed import recommend_device_options, recommend_devices_given
from .shell import console, db_option, main, model_argument, print_json, speed_model

# --- memory: recommend (issue 6) ---------------------------------------------------------------

@main.command()
@model_argument
@click.option("--vram", type=float, required=True, help="GPU memory in GiB (0: CPU only).")
@click.option("--ram", type=float, help="Host memory in GiB (default: this machine's).")
@click.option("--ctx", type=int, default=4096, show_default=True, help="Context length to fit.")
@click.option("--goal", type=click.Choice(["balanced", "quality", "speed"]), default="balanced", show_default=True,
              help="balanced: the most tok/s per unit of expected KLD among plans at >= 3 tok/s; quality: the least "
                   "loss; speed: the fastest within a Q4_K_M-like loss.")
@click.option("--min-tps", type=float, help="The least loss among plans expected at least this fast (tok/s).")
@click.option("--max-kld", type=float, help="The fastest plan expected within this KLD.")
@click.option("--margin", type=float, default=512, show_default=True, help="MiB kept free on each device.")
@click.option("--bands", type=int, default=4, show_default=True, help="Layer bands per role (groups).")
@click.option("--gpu-bandwidth", "--bandwidth", "gpu_bandwidth", type=float,
              help="GPU memory bandwidth in GB/s (plan for another machine; default: calibration or an assumption).")
@click.option("--host-bandwidth", type=float, help="Host memory bandwidth in GB/s (default: calibration or measured).")
@click.option("--priors", is_flag=True,
              help="Use the priors only: no stored sensitivity, no measured KV-cache loss, no error proxy.")
@click.option("--loss", "loss_mode", type=click.Choice(["auto", "proxy", "prior"]), default="auto", show_default=True,
              help="What prices the weights no sensitivity run measured. auto: the error proxy fitted on this model "
                   "when it runs here (the fit, ~16 quantize+eval passes, is made once and kept), else the priors; "
                   "proxy: the proxy or an error; prior: the priors.")
@click.option("--imatrix", type=click.Path(path_type=str),
              help="Importance-matrix file to quantize with: its i-quant types join the candidates, the "
                   "llama-quantize line and --verify use it. auto: this model's cached one, collected now if "
                   "there is none; none: without. Default: the cached one when an earlier auto left one.")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Write the plan as a profile YAML, and llama-quantize's tensor-type file next to it.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--verify", is_flag=True, help="Quantize the plan and measure its KLD against the model.")
@click.option("--reference", type=click.Path(path_type=str), help="Reference for --verify (default: MODEL).")
@click.option("--chunks", type=int, default=4, show_default=True, help="Evaluation windows for --verify.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (every row of the front).")
@click.option("--no-store", is_flag=True, help="Do not record the chosen plan in the history.")
@recommend_device_options
@db_option
def recommend(model: str, vram: float, ram: float | None, ctx: int, goal: str, min_tps: float | None,
              max_kld: float | None, margin: float, bands: int, gpu_bandwidth: float | None,
              host_bandwidth: float | None, priors: bool, loss_mode: str, imatrix: str | None, output: str | None,
              force: bool,
              verify: bool,
              reference: str | None, chunks: int, as_json: bool, no_store: bool, db: str | None,
              rpc_servers: tuple[str, ...] = (), rpc_bandwidth: tuple[str, ...] = ()) -> None:
    """The quality/speed front of plans (weight types per group, KV cache, GPU layers) that fit VRAM/RAM, and
    the one the goal picks, with the llama.cpp commands that make and run it."""
    from .. import recommend as rec_mod
    from .. import recommend_verify
    from ..fileio import atomic_write_text, check_output
    from ..gguf_info import read_gguf
    from ..imatrix import recommend_imatrix
    from ..kv_loss import measure_kv_loss
    from ..profile import profile_to_yaml
    from ..recommend.commands import llama_commands, tensor_type_file_for

    rec_mod.validate(vram, ram, ctx, margin, bands, min_tps, max_kld, gpu_bandwidth, host_bandwidth)
    if output:
        check_output(output, force=force, source=model)
        check_output(tensor_type_file_for(output), force=force, source=model)
    info = read_gguf(model)
    devices = recommend_devices_given(rpc_servers, rpc_bandwidth)  # probed (or declared) before any long work
    imatrix = recommend_imatrix(model, imatrix, notice=lambda m: click.echo(f"ggprec: {m}", err=True))
    if imatrix is not None:
        rec_mod.check_imatrix_file(imatrix, info)
    sens = None if priors else rec_mod.stored_sensitivity(model)
    # The KV cache's loss on this very model: one evaluation per KV type when the file runs here (cached by
    # sha256; None at once for a sparse file), else the prior.
    kv_measured = None if priors else measure_kv_loss(model, notice=lambda m: click.echo(f"ggprec: {m}", err=True))
    proxy = _fitted_proxy(model, info, imatrix, "prior" if priors else loss_mode, db)
    rec = rec_mod.recommend(info, vram, ram, ctx=ctx, goal=goal, margin_mb=margin, n_bands=bands,
                            sensitivity=sens, gpu_gbps=gpu_bandwidth, host_gbps=host_bandwidth, min_tps=min_tps,
                            max_kld=max_kld, kv_measured=kv_measured, imatrix=imatrix,
                            speed_model=speed_model(host_bandwidth, gpu_bandwidth, db), devices=devices,
                            proxy=proxy)
    commands = llama_commands(rec, info, tensor_type_file_for(output) if output else None)
    verified = recommend_verify.verify(rec, model, reference, chunks=chunks) if verify else None
    if output:
        atomic_write_text(output, profile_to_yaml(rec_mod.to_profile(rec)), force=True)
        atomic_write_text(commands.tensor_type_file, commands.tensor_type_text(), force=True)
    if not no_store:
        from ..history import save_recommendation
        from ..store import Store

        with Store(db) as store:
            save_recommendation(store, rec, verified, output)
    if as_json:
        print_json({**rec.to_dict(), "llama_cpp": commands.to_dict(), "verified": verified, "profile": output})
    else:
        from ..recommend.render import render

        render(rec, console(), info.hparams.n_layer, commands, verified, written=bool(output))
        if output:
            click.echo(f"wrote {output} and {commands.tensor_type_file}")


def _fitted_proxy(model: str, info: object, imatrix: str | None, mode: str, db: str | None) -> object:
    """The error proxy fitted to this model (ggprec.proxy.recommend_proxy), or None for the priors."""
    from ..proxy import recommend_proxy
    from ..recommend.loss import candidate_names

    return recommend_proxy(model, info, candidate_names(imatrix is not None), imatrix, mode, db,
                           notice=lambda m: click.echo(f"ggprec: {m}", err=True))


# --- sensitivity (issue 7) ---------------------------------------------------------------------

@main.command()
@model_argument
@click.option("--reference", type=click.Path(path_type=str), help="Reference model (default: MODEL itself).")
@click.option("--probe-type", default="q4_0", show_default=True, help="Type each group is quantized to.")
@click.option("--also", "also", multiple=True,
              help="A further probe type, measured per group too (repeatable); recommend fits each group's "
                   "loss-vs-bits curve through the probes (e.g. --also q8_0).")
@click.option("--also-groups", "also_grouping", type=click.Choice(["role", "role-layer", "layer"]),
              help="Grouping for the --also types (default: --groups); 'role' fits one slope per role cheaply.")
@click.option("--groups", "grouping", type=click.Choice(["role", "role-layer", "layer"]), default="role-layer",
              show_default=True, help="Per role, per role x layer band, or per layer band.")
@click.option("--bands", type=int, default=4, show_default=True, help="Layer bands (role-layer; layer uses 2x).")
@click.option("--text", "text_file", type=click.Path(path_type=str), help="Evaluation text (default: shipped).")
@click.option("--ctx", type=int, default=512, show_default=True, help="Evaluation window.")
@click.option("--chunks", type=int, default=4, show_default=True, help="Evaluation windows per group.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--heatmap", type=click.Path(path_type=str), default="sensitivity.png", show_default=True,
              help="Layer x role heatmap PNG.")
@click.option("--no-store", is_flag=True, help="Do not record the result in the history.")
@click.option("--reuse", is_flag=True,
              help="Take passes already stored for this model, reference, text, --ctx and --chunks from the history "
                   "instead of repeating them (deterministic at fixed threads).")
@click.option("--proxy", is_flag=True,
              help="Every group from the error proxy (the file's weights requantized by ggml, no inference) in one "
                   "streaming pass; expected KLD from a stored fit, --fit, or the priors.")
@click.option("--imatrix", "imatrix_path", type=click.Path(path_type=str),
              help="Quantize every pass with this importance matrix; with --proxy, also weigh each input column by it.")
@click.option("--fit", is_flag=True, help="With --proxy: fit the proxy to KLD now (each role alone at the probe type "
              "and at q8_0, quantized and evaluated: 16 passes on SmolLM2) and keep the fit in the history.")
@click.option("--max-rows", type=click.IntRange(0), default=512, show_default=True,
              help="With --proxy: rows measured per tensor (evenly spaced; 0: every row).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@db_option
def sensitivity(model: str, reference: str | None, probe_type: str, also: tuple[str, ...],
                also_grouping: str | None, grouping: str, bands: int, text_file: str | None, ctx: int,
                chunks: int, threads: int, heatmap: str, no_store: bool, reuse: bool, proxy: bool,
                imatrix_path: str | None, fit: bool, max_rows: int, as_json: bool, db: str | None) -> None:
    """Quantize one tensor group at a time to the probe type and measure the damage (KLD, top-1); with --proxy,
    estimate it for every group at once from the weights."""
    from ..evaluate import read_text

    text = read_text(text_file) if text_file else None
    if proxy:
        _proxy_sensitivity(model, probe_type, also, grouping, bands, imatrix_path, fit, threads, max_rows, text, ctx,
                           chunks, as_json, db)
        return
    if fit:
        from ..errors import GgprecError

        raise GgprecError("--fit goes with --proxy")
    from ..sensitivity import measure_sensitivity, render

    def progress(key: str, done: int, total: int) -> None:
        if not as_json:
            click.echo(f"[{done}/{total}] {key}", err=True)

    res = measure_sensitivity(model, reference, probe_type=probe_type, grouping=grouping, text=text, n_ctx=ctx,
                              chunks=chunks, n_bands=bands, threads=threads,
                              heatmap=heatmap, progress=progress, also=also,
                              also_grouping=also_grouping, reuse=reuse, db=db, imatrix_path=imatrix_path)
    if not no_store:
        from ..history import save_sensitivity
        from ..store import Store

        with Store(db) as store:
            save_sensitivity(store, res, text, imatrix_path)
    if as_json:
        print_json(res.to_dict())
    else:
        render(res, console())


def _proxy_sensitivity(model: str, probe_type: str, also: tuple[str, ...], grouping: str, bands: int,
                       imatrix_path: str | None, fit: bool, threads: int, max_rows: int, text: str | None, ctx: int,
                       chunks: int, as_json: bool, db: str | None) -> None:
    import contextlib
    import sys

    from ..progress import terminal_bar
    from ..proxy import proxy_sensitivity, render

    bar = terminal_bar("proxy") if sys.stderr.isatty() and not as_json else contextlib.nullcontext()
    with bar as progress:
        res = proxy_sensitivity(model, probe_type, also, grouping, bands, imatrix_path, fit=fit, threads=threads,
                                max_rows=max_rows or None, text=text, n_ctx=ctx, chunks=chunks, progress=progress,
                                db=db)
    if as_json:
        print_json(res.to_dict(), schema=1)
    else:
        render(res, console())
