"""Several devices: `ggprec rpc-server`, and the device options (`--rpc`, `-ts`, `--device`) that the
commands loading a model share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import GgprecError
from .shell import main


@main.command("rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes an unauthenticated protocol.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=50052, show_default=True, help="TCP port.")
@click.option("-t", "--threads", type=click.IntRange(min=1), help="CPU threads (default: half the logical CPUs).")
@click.option("-d", "--device", "devices", help="Comma-separated local devices to share (default: every GPU, "
              "else the CPU), as ggml-rpc-server.")
def rpc_server(host: str, port: int, threads: int | None, devices: str | None) -> None:
    """Serve this host's devices to llama.cpp clients (`--rpc HOST:PORT`): llama.cpp's own RPC server,
    protocol-compatible with ggml-rpc-server. Stops on Ctrl-C or SIGTERM."""
    from .. import rpc
    from ..llama_backend import default_threads

    if not rpc.is_loopback(host):
        click.echo(f"ggprec: warning: listening on {host}:{port}: {rpc.SECURITY_NOTE}", err=True)
    names = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    rpc.serve(host, port, threads or default_threads(), names)


# llama.cpp splits rows only into a backend's split buffer type (ggml_backend_split_buffer_type, CUDA/SYCL);
# ggml-rpc's registry offers none, so llama.cpp throws "device RPC0 does not support split buffers"
# (src/llama-model.cpp, make_gpu_buft_list), and ggprec's memory model does not describe row splits anyway.
ROW_REFUSED = ("-sm row: llama.cpp's RPC devices have no split buffer type (llama.cpp refuses row split over "
               "RPC), and ggprec does not predict row split across local GPUs; use -sm layer")


def device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--rpc, -ts/--tensor-split, -dev/--device, -sm/--split-mode and -mg/--main-gpu, as llama.cpp's
    common/arg.cpp spells them (the values reach the command as one `devices_given` dict)."""
    fn = click.option("-mg", "--main-gpu", "main_gpu", type=int,
                      help="With -sm none: the index of the one device to use (default 0).")(fn)
    fn = click.option("-sm", "--split-mode", "split_mode", type=click.Choice(["layer", "none", "row"]),
                      help="layer: split the offloaded layers over the devices (default); none: main GPU only; "
                           "row: refused (see ROW_REFUSED).")(fn)
    fn = click.option("-dev", "--device", "device", metavar="DEV1,DEV2,...",
                      help="Devices to offload to, in order (RPC0, RPC1, CUDA0, ...; none: no offload); "
                           "default: every RPC server's, then the local GPUs.")(fn)
    fn = click.option("-ts", "--tensor-split", "tensor_split", metavar="N0,N1,...",
                      help="Share of the offloaded layers per device, e.g. 3,1 (default: by free memory).")(fn)
    fn = click.option("--rpc", "rpc_servers", multiple=True, metavar="HOST:PORT,...",
                      help="llama.cpp RPC servers (`ggprec rpc-server`) whose devices join this run; each is "
                           "probed first.")(fn)
    return fn


def device_overrides(rpc_servers: tuple[str, ...], tensor_split: str | None, device: str | None,
                     split_mode: str | None = None, main_gpu: int | None = None,
                     ngl: int | None = None) -> dict[str, Any]:
    """RuntimeSettings changes for the device options given (nothing for options not given). With RPC
    servers or --device and no -ngl, every layer is offloaded (what llama.cpp's tools do by default)."""
    from ..rpc import parse_servers
    from ..settings import ALL_LAYERS

    if split_mode == "row":
        raise GgprecError(ROW_REFUSED)
    out: dict[str, Any] = {}
    if ngl is not None:
        out["n_gpu_layers"] = ngl
    elif rpc_servers or (device is not None and device.strip() != "none"):
        out["n_gpu_layers"] = ALL_LAYERS
    if split_mode is not None:
        out["split_mode"] = split_mode
    if main_gpu is not None:
        out["main_gpu"] = main_gpu
    if rpc_servers:
        out["rpc_servers"] = parse_servers(rpc_servers)
    if tensor_split is not None:
        out["tensor_split"] = parse_split(tensor_split)
    if device is not None:
        names = tuple(d.strip() for d in device.split(",") if d.strip())
        if not names:
            raise GgprecError("--device: no devices given (none: no offload)")
        out["devices"] = names
    return out


def parse_split(text: str) -> tuple[float, ...]:
    """llama.cpp's -ts: proportions separated by ',' or '/'."""
    import math
    import re

    parts = [p for p in re.split(r"[,/]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise GgprecError(f"--tensor-split {text!r}: expected numbers, e.g. 3,1") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise GgprecError(f"--tensor-split {text!r}: expected proportions >= 0, not all 0, e.g. 3,1")
    return values


def recommend_device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`ggprec recommend`'s devices: RPC servers, each with the memory it may use, and their bandwidth."""
    fn = click.option("--rpc-bandwidth", "rpc_bandwidth", multiple=True, metavar="[HOST:PORT=]GBPS",
                      help="Memory bandwidth of an RPC server's device in GB/s (a bare figure: every server's); "
                           "default: assumed the same as this host's.")(fn)
    fn = click.option("--rpc", "rpc_servers", multiple=True, metavar="HOST:PORT[=GIB],...",
                      help="Split the model over llama.cpp RPC servers (before the local GPU, as llama.cpp orders "
                           "them), each with the memory it may use in GiB (default: what it reports free; a CPU "
                           "server reports its whole RAM). A server that does not answer is planned from the "
                           "declared GiB.")(fn)
    return fn


def recommend_devices_given(rpc_servers: tuple[str, ...], rpc_bandwidth: tuple[str, ...]) -> list[Any]:
    """recommend_devices.DeviceBudgets of the servers given (each probed; declared where it does not answer)."""
    from .. import recommend_devices as rd

    if not rpc_servers:
        if rpc_bandwidth:
            raise GgprecError("--rpc-bandwidth goes with --rpc")
        return []
    specs = rd.parse_rpc_budgets(rpc_servers)
    return rd.rpc_budgets(specs, rd.parse_bandwidths(rpc_bandwidth, [e for e, _ in specs]))
