"""llama.cpp's RPC devices: the wire probe, `ggprec rpc-server`, the layer split and the per-device memory
model, checked against real llama.cpp servers on loopback (127.0.0.1 only, random free ports, every
server killed at the end). Tests that need llama.cpp's RPC backend skip, with the reason, only where the
installed llama-cpp-python was built without it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec import rpc
from ggprec.cli import main
from ggprec.cli.distributed import parse_split
from ggprec.errors import GgprecError
from ggprec.layer_split import CPU, OffloadDevice, assign_layers, layer_devices, split_points

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def require_rpc_build() -> None:
    """Skip, with the reason, where llama-cpp-python lacks RPC; fail instead under $GGPREC_REQUIRE_RPC (CI)."""
    if not rpc.supports_rpc():
        reason = "this llama-cpp-python was built without RPC (CMAKE_ARGS=-DGGML_RPC=on)"
        if os.environ.get("GGPREC_REQUIRE_RPC"):
            pytest.fail(reason)
        pytest.skip(reason)


class Server:
    """`ggprec rpc-server` on a free loopback port, as a separate process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"{LOOPBACK}:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "ggprec", "rpc-server", "--port", str(self.port),
                                      "-t", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                rpc.probe(self.endpoint, timeout=2.0)
                return
            except GgprecError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rpc-server on {self.endpoint} did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """Two loopback servers shared by the module's tests."""
    require_rpc_build()
    started: list[Server] = []
    try:
        started.append(Server())
        started.append(Server())
        yield started[0].endpoint, started[1].endpoint
    finally:
        for s in started:
            s.stop()


@pytest.fixture()
def own_server() -> Iterator[Server]:
    """A server of the test's own, which it may kill."""
    require_rpc_build()
    server = Server()
    try:
        yield server
    finally:
        server.stop()


def loopback_listener(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A plain TCP port on loopback whose connections `serve(sock, stop)` handles in a thread, until stopped."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(4)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(sock, stop), daemon=True)
    thread.start()
    try:
        yield f"{LOOPBACK}:{sock.getsockname()[1]}"
    finally:
        stop.set()
        sock.close()
        thread.join(timeout=12)


@pytest.fixture()
def silent_listener() -> Iterator[str]:
    """A plain TCP port that accepts and never answers (not an RPC server)."""

    def accept(sock: socket.socket, stop: threading.Event) -> None:
        accepted: list[socket.socket] = []
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue
        for conn in accepted:
            conn.close()

    yield from loopback_listener(accept)


@pytest.fixture()
def http_listener() -> Iterator[str]:
    """A plain TCP port that answers anything with an HTTP error, like a web server would."""

    def serve(sock: socket.socket, stop: threading.Event) -> None:
        sock.settimeout(10)
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    yield from loopback_listener(serve)


# --- pure: endpoints, splits, the layer rule ------------------------------------------------------

def test_servers_are_parsed_like_llama_cpp_comma_separated_in_order() -> None:
    assert rpc.parse_servers(["127.0.0.1:50052,127.0.0.1:50053", "localhost:1"]) == (
        "127.0.0.1:50052", "127.0.0.1:50053", "localhost:1")


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:", ":50052", "127.0.0.1:0", "127.0.0.1:70000",
                                 "127.0.0.1:5x", "::1:50052"])
def test_a_malformed_endpoint_is_one_line(bad: str) -> None:
    with pytest.raises(GgprecError, match="expected HOST:PORT"):
        rpc.parse_servers([bad])


def test_a_server_given_twice_is_refused() -> None:
    with pytest.raises(GgprecError, match="given twice"):
        rpc.parse_servers(["127.0.0.1:1,127.0.0.1:1"])


def test_tensor_split_reads_commas_and_slashes_like_llama_cpp() -> None:
    assert parse_split("3,1") == (3.0, 1.0)
    assert parse_split("1/2/0.5") == (1.0, 2.0, 0.5)
    for bad in ("", "a,b", "-1,2", "0,0", "nan"):
        with pytest.raises(GgprecError):
            parse_split(bad)


def test_split_points_are_cumulative_and_end_at_one() -> None:
    assert split_points([1, 1]) == [0.5, 1.0]
    assert split_points([3, 1]) == [0.75, 1.0]


def test_layers_follow_llama_cpps_rule_as_its_load_log_shows() -> None:
    # SmolLM2 (30 layers), -ngl 20, -ts 1,1: llama.cpp logs layers 0-10 on CPU, 11-20 on RPC0, 21-30 on RPC1
    # (30 = the output layer).
    layers = assign_layers(30, 20, ["A", "B"], [1, 1])
    assert layers == [CPU] * 11 + ["A"] * 10 + ["B"] * 10


def test_ngl_1_offloads_the_output_layer_only() -> None:
    assert assign_layers(4, 1, ["A", "B"], [1, 1]) == [CPU] * 4 + ["A"]


def test_all_layers_and_no_device() -> None:
    assert assign_layers(3, -1, ["A", "B"], [3, 1]) == ["A", "A", "A", "B"]
    assert layer_devices(3, -1, []) == [CPU] * 4


def test_without_a_split_free_memory_decides() -> None:
    devices = [OffloadDevice("RPC0", "A", 3 << 30), OffloadDevice("RPC1", "B", 1 << 30)]
    assert layer_devices(3, -1, devices) == ["A", "A", "A", "B"]
    with pytest.raises(GgprecError, match="3 proportions but there are 2 devices"):
        layer_devices(3, -1, devices, (1, 1, 1))


# --- pure: the wire probe against things that are not RPC servers --------------------------------

def test_a_closed_port_is_one_line() -> None:
    with pytest.raises(GgprecError, match=r"^RPC server 127\.0\.0\.1:\d+: connection refused"):
        rpc.probe(f"{LOOPBACK}:{free_port()}", timeout=2.0)


def test_a_silent_port_is_one_line_within_the_timeout(silent_listener: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(GgprecError, match="no answer to the handshake within 1 s: not an RPC server"):
        rpc.probe(silent_listener, timeout=1.0)
    assert time.monotonic() - t0 < 3


def test_a_web_server_is_not_an_rpc_server(http_listener: str) -> None:
    with pytest.raises(GgprecError, match="not a compatible llama.cpp RPC server|not an RPC server"):
        rpc.probe(http_listener, timeout=5.0)


def test_a_non_loopback_host_gets_the_security_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(host: str, port: int, *args: object) -> None:
        raise GgprecError(f"cannot listen on {host}:{port}: test")

    monkeypatch.setattr(rpc, "serve", refuse)  # nothing listens: the warning comes before
    r = CliRunner().invoke(main, ["rpc-server", "--host", "10.255.255.1", "--port", "50052"])
    assert r.exit_code == 2
    assert "no authentication" in r.output and "10.255.255.1:50052" in r.output


# --- llama.cpp: the double load, the server, the client ------------------------------------------



@pytest.mark.llama
def test_probe_reads_version_and_devices(servers: tuple[str, str]) -> None:
    peer = rpc.probe(servers[0])
    assert peer.version[0] == rpc.PROTOCOL[0] and peer.version[1] <= rpc.PROTOCOL[1]
    assert len(peer.devices) == 1 and 0 < peer.devices[0].free <= peer.devices[0].total
    assert peer.buffer_names() == [f"RPC0[{servers[0]}]"]


@pytest.mark.llama
def test_rpc_server_stops_on_sigterm_and_sigint_with_130_and_143() -> None:
    require_rpc_build()
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        server = Server()
        try:
            t0 = time.monotonic()
            server.proc.send_signal(sig)
            assert server.proc.wait(timeout=10) == code
            assert time.monotonic() - t0 < 5
            assert server.proc.stderr is not None
            assert server.proc.stderr.read().decode().strip().splitlines()[-1].startswith("ggprec: interrupted")
        finally:
            server.stop()


@pytest.mark.llama
def test_rpc_server_on_a_taken_port_is_one_line_exit_2(servers: tuple[str, str]) -> None:
    port = servers[0].rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "ggprec", "rpc-server", "--port", port], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"ggprec: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ggprec", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.llama
def test_run_with_an_unreachable_server_is_one_line_exit_2(demo_model: Path, tmp_path: Path) -> None:
    require_rpc_build()
    r = _run_cli("run", str(demo_model), "--rpc", f"{LOOPBACK}:{free_port()}", "-ngl", "99",
                 "--db", str(tmp_path / "h.db"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "connection refused" in r.stderr


@pytest.mark.llama
def test_run_against_a_non_rpc_port_is_one_line_exit_2(demo_model: Path, silent_listener: str,
                                                         tmp_path: Path) -> None:
    require_rpc_build()
    r = _run_cli("run", str(demo_model), "--rpc", silent_listener, "-ngl", "99", "--db", str(tmp_path / "h.db"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "not an RPC server" in r.stderr


@pytest.mark.llama
def test_more_split_proportions_than_devices_is_one_line(demo_model: Path, servers: tuple[str, str]) -> None:
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=256, n_threads=1, n_gpu_layers=99, rpc_servers=servers[:1],
                               tensor_split=(1, 1))
    with pytest.raises(GgprecError, match="2 proportions but there are 1 devices"):
        run_benchmark(demo_model, settings, pp=8, tg=0, reps=1)


def _logits_here(path: Path, settings: object, report: object = None, extra_buffers: bool | None = None) -> object:
    from ggprec.llama_backend import load_model, load_vocab, tokenize

    with load_vocab(path) as vocab:
        tokens = tokenize(vocab, "The quick brown fox jumps over the lazy dog. " * 4, add_bos=True)
    with load_model(path, settings, extra_buffers=extra_buffers) as lm:  # type: ignore[arg-type]
        return lm.decode_logits(tokens, range(len(tokens)))


@pytest.mark.llama
@pytest.mark.slow
def test_split_over_two_servers_and_the_cpu_gives_the_local_logits(demo_model: Path,
                                                                    servers: tuple[str, str]) -> None:
    import numpy as np

    from ggprec.settings import RuntimeSettings

    local = RuntimeSettings(n_ctx=256, n_threads=1)
    split = local.with_overrides(n_gpu_layers=20, rpc_servers=servers, tensor_split=(1, 2))
    here = _logits_here(demo_model, local)
    there = rpc.isolated(_logits_here, demo_model, split, servers=servers)
    assert np.abs(np.asarray(there) - np.asarray(here)).max() == 0.0


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("ngl, split", [(20, (1, 1)), (25, (3, 1)), (12, (1, 2)), (99, (1, 1))])
def test_every_rpc_buffer_is_predicted_within_2_percent(demo_model: Path, servers: tuple[str, str], ngl: int,
                                                        split: tuple[float, ...]) -> None:
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=512, n_threads=1, n_gpu_layers=ngl, rpc_servers=servers, tensor_split=split)
    r = run_benchmark(demo_model, settings, pp=8, tg=2, reps=1)
    assert r.predicted is not None
    rpc_keys = {k for k in r.allocation.buffers if "[127.0.0.1:" in k}
    assert {f"{kind}:RPC0[{s}]" for kind in ("model", "kv", "compute") for s in servers} == rpc_keys
    for key in rpc_keys:
        assert r.predicted[key] == pytest.approx(r.allocation.buffers[key], rel=0.02), key
    assert r.predicted.keys() == r.allocation.buffers.keys()


@pytest.mark.llama
@pytest.mark.slow
def test_a_server_killed_during_run_is_one_line_and_nothing_is_recorded(demo_model: Path, own_server: Server,
                                                                         servers: tuple[str, str],
                                                                         tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    proc = subprocess.Popen([sys.executable, "-m", "ggprec", "run", str(demo_model), "--rpc",
                             f"{servers[0]},{own_server.endpoint}", "-ngl", "20", "-c", "2048", "--pp", "16",
                             "--tg", "1500", "--reps", "20", "-t", "1", "--db", str(db), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # loaded and decoding
        assert proc.poll() is None
        t0 = time.monotonic()
        own_server.proc.kill()
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ggprec: error: llama.cpp aborted (SIGABRT)"), err
    assert own_server.endpoint in lines[0]
    from ggprec.store import Store

    with Store(db) as store:
        assert store.query(kind="run") == []


@pytest.fixture(scope="module")
def gemma3() -> Path:
    from ggprec.demo_model import real_model_path

    return real_model_path("gemma3-270m", quiet=True)


@pytest.mark.llama
@pytest.mark.slow
def test_gemma3_split_gives_the_local_logits_and_every_rpc_buffer_as_predicted(
        gemma3: Path, servers: tuple[str, str]) -> None:
    """Gemma 3 (sliding-window layers, q/k norms, GELU FFN, 262k vocabulary): identical logits, and every
    RPC buffer as predicted, with part of the layers on the CPU and with all of them offloaded (pipeline
    parallelism). An RPC server keeps its
    weights in a plain CPU buffer (no repacking), so the local run is compared without repacked buffers
    either (llama.cpp's --no-repack): Q4_K's repacked kernels round differently."""
    import numpy as np

    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    local = RuntimeSettings(n_ctx=256, n_threads=1)
    split = local.with_overrides(n_gpu_layers=10, rpc_servers=servers, tensor_split=(1, 1))
    here = _logits_here(gemma3, local, extra_buffers=False)
    there = rpc.isolated(_logits_here, gemma3, split, servers=servers, extra_buffers=False)
    assert np.abs(np.asarray(there) - np.asarray(here)).max() == 0.0
    for ngl in (10, 99):
        r = run_benchmark(gemma3, split.with_overrides(n_ctx=512, n_gpu_layers=ngl), pp=8, tg=0, reps=1)
        assert r.predicted is not None
        for kind in ("model", "kv", "compute"):
            for s in servers:
                key = f"{kind}:RPC0[{s}]"
                assert r.predicted[key] == pytest.approx(r.allocation.buffers[key], rel=0.02), (ngl, key)


@pytest.mark.llama
@pytest.mark.slow
def test_plan_predicts_each_device_share_as_a_run_allocates_it(demo_model: Path, servers: tuple[str, str]) -> None:
    from ggprec.device_plan import plan_devices
    from ggprec.gguf_info import read_gguf
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=512, n_threads=1, n_gpu_layers=22, rpc_servers=servers, tensor_split=(2, 1))
    plan = plan_devices(read_gguf(demo_model), settings)  # probes only: nothing of llama.cpp connects
    assert [(s.name, s.layers) for s in plan.shares] == [
        ("RPC0", list(range(9, 24))), ("RPC1", list(range(24, 31))), ("CPU", list(range(9)))]
    r = run_benchmark(demo_model, settings, pp=8, tg=0, reps=1)
    for key, n in r.allocation.buffers.items():
        assert plan.buffers[key] == pytest.approx(n, rel=0.02), key


@pytest.mark.llama
def test_plan_with_an_unreachable_server_is_one_line_exit_2(demo_model: Path) -> None:
    r = _run_cli("plan", str(demo_model), "-p", "q8_0", "--rpc", f"{LOOPBACK}:{free_port()}")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "connection refused" in r.stderr


@pytest.mark.llama
def test_plan_json_lists_every_device_with_its_layers(demo_model: Path, servers: tuple[str, str]) -> None:
    import json

    r = _run_cli("plan", str(demo_model), "-p", "q8_0", "--rpc", ",".join(servers), "-ts", "1,1", "--json")
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)["devices"]["devices"]
    assert [d["device"] for d in devices] == [f"RPC0[{s}]" for s in servers] + ["this host"]
    assert sorted(il for d in devices for il in d["layers"]) == list(range(31))


@pytest.mark.llama
@pytest.mark.slow
def test_a_fitted_split_runs_within_every_budget(demo_model: Path, servers: tuple[str, str]) -> None:
    from ggprec.gguf_info import read_gguf
    from ggprec.recommend_devices import fit_split, resolve_budgets
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=512, n_threads=1, rpc_servers=servers)
    devices = rpc.planned_devices(servers)
    budgets = resolve_budgets(devices, {servers[0]: 0.05, servers[1]: 0.15}, None)
    fit = fit_split(read_gguf(demo_model), settings, devices, budgets)
    assert 0 < fit.n_gpu_layers < 31 and all(fit.counts)
    r = run_benchmark(demo_model, fit.settings, pp=8, tg=0, reps=1)
    for d in devices:
        allocated = sum(n for key, n in r.allocation.buffers.items() if key.endswith(f":{d.buffer}"))
        assert allocated <= budgets[d.buffer] * 1.02, d.buffer


@pytest.mark.llama
@pytest.mark.slow
def test_recommends_plan_over_two_servers_and_this_host_runs_as_predicted(demo_model: Path,
                                                                            servers: tuple[str, str]) -> None:
    """recommend across devices, run for real: the RAM budget is below what the model needs alone, so the plan
    splits; every RPC buffer llama.cpp allocates is recommend's prediction within 2%, and the run shows an
    expected tg that charges the hops."""
    from ggprec.gguf_info import read_gguf
    from ggprec.quantize import build_variant
    from ggprec.recommend import recommend, to_profile
    from ggprec.recommend_devices import parse_rpc_budgets, rpc_budgets
    from ggprec.runner import run_benchmark
    from ggprec.speed import load_speed_model
    from ggprec.units import GIB, MIB

    info = read_gguf(demo_model)
    devices = rpc_budgets(parse_rpc_budgets([f"{servers[0]}=0.1", f"{servers[1]}=0.16"]))
    assert [d.probed for d in devices] == [True, True]
    speed = load_speed_model(host_gbps=20.0)
    rec = recommend(info, 0, 0.12, ctx=512, margin_mb=4, devices=devices, speed_model=speed)
    assert rec.settings.rpc_servers == servers and all(rec.settings.tensor_split)
    for d in rec.devices[:-1]:  # every server within its budget, by the prediction
        assert d["predicted_bytes"] <= d["budget_bytes"] - 4 * MIB, d["device"]
    assert rec.host_total <= 0.12 * GIB - 4 * MIB
    model = demo_model if rec.as_is else build_variant(demo_model, to_profile(rec), threads=2)
    r = run_benchmark(model, rec.settings.with_overrides(n_threads=1), pp=8, tg=8, reps=1, speed_model=speed)
    rpc_keys = [k for k in r.allocation.buffers if "RPC" in k]
    assert len(rpc_keys) == 6  # model, KV and compute on each server
    for key in rpc_keys:
        assert abs(rec.buffers[key] - r.allocation.buffers[key]) <= 0.02 * r.allocation.buffers[key], key
    assert r.expected_tg_tps is not None and "each RPC hop" in (r.expected_tg_source or "")


def _sleeps(seconds: float, report: object = None) -> str:
    time.sleep(seconds)
    return "done"


def _aborts(report: object = None) -> None:
    os.abort()


def _refuses(report: object = None) -> None:
    raise GgprecError("refused in the child")


@pytest.mark.llama
def test_isolated_returns_the_childs_value_and_its_one_line_errors() -> None:
    assert rpc.isolated(_sleeps, 0.0) == "done"
    with pytest.raises(GgprecError, match="^refused in the child$"):
        rpc.isolated(_refuses)
    with pytest.raises(GgprecError, match=r"^llama.cpp aborted \(SIGABRT\): .*nothing was written$"):
        rpc.isolated(_aborts)


@pytest.mark.llama
def test_isolated_stops_a_child_silent_past_the_stall_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(GgprecError, match="no progress for 0.5 s"):
        rpc.isolated(_sleeps, 30.0, stall_timeout=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.llama
@pytest.mark.slow
def test_ctrl_c_during_an_rpc_run_exits_130_promptly(demo_model: Path, servers: tuple[str, str],
                                                     tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ggprec", "run", str(demo_model), "--rpc", servers[0], "-ngl", "20",
                             "-c", "2048", "--pp", "16", "--tg", "1500", "--reps", "20", "-t", "1",
                             "--db", str(tmp_path / "h.db")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["ggprec: interrupted (SIGINT)"]
    rpc.probe(servers[0])  # the server is free again for the next client


@pytest.mark.llama
@pytest.mark.slow
def test_split_mode_none_puts_every_offloaded_layer_on_the_main_gpu(demo_model: Path,
                                                                    servers: tuple[str, str]) -> None:
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=512, n_threads=1, n_gpu_layers=99, rpc_servers=servers, split_mode="none",
                               main_gpu=1)
    r = run_benchmark(demo_model, settings, pp=8, tg=0, reps=1)
    assert not any(servers[0] in key for key in r.allocation.buffers)
    assert r.predicted is not None
    for kind in ("model", "kv", "compute"):
        key = f"{kind}:RPC0[{servers[1]}]"
        assert r.predicted[key] == pytest.approx(r.allocation.buffers[key], rel=0.02), key
    with pytest.raises(GgprecError, match="main GPU 2: there are 2 devices to offload to"):
        run_benchmark(demo_model, settings.with_overrides(main_gpu=2), pp=8, tg=0, reps=1)


def test_device_options_offload_everything_unless_ngl_says_otherwise() -> None:
    from ggprec.cli.distributed import device_overrides

    assert device_overrides((LOOPBACK + ":1",), None, None)["n_gpu_layers"] == -1
    assert device_overrides((LOOPBACK + ":1",), "3,1", None, ngl=7) == {
        "n_gpu_layers": 7, "rpc_servers": (LOOPBACK + ":1",), "tensor_split": (3.0, 1.0)}
    assert device_overrides((), None, "none") == {"devices": ("none",)}
    assert device_overrides((), None, None) == {}


def test_split_mode_row_is_refused_in_one_line_with_the_reason(demo_model: Path) -> None:
    r = CliRunner().invoke(main, ["plan", str(demo_model), "-p", "q8_0", "--rpc", f"{LOOPBACK}:1", "-sm", "row"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == ["ggprec: error: -sm row: llama.cpp's RPC devices have no split buffer "
                                             "type (llama.cpp refuses row split over RPC), and ggprec does not "
                                             "predict row split across local GPUs; use -sm layer"]


def test_plan_names_layer_ranges_and_prints_every_hosts_command() -> None:
    from ggprec.device_plan import DevicePlan, commands, layer_ranges
    from ggprec.settings import RuntimeSettings

    assert layer_ranges([0, 1, 2, 5, 6, 30], 30) == "0-2, 5-6, output"
    assert layer_ranges([], 30) == "-"
    settings = RuntimeSettings(n_ctx=8192, n_gpu_layers=81, rpc_servers=("10.0.0.2:50052",), tensor_split=(32, 49),
                               cache_type_k="q8_0", cache_type_v="q8_0")
    lines = commands(DevicePlan(settings, 80, [], {}, {}), "m.gguf")
    assert lines == [
        "on 10.0.0.2: ggprec rpc-server --host 10.0.0.2 --port 50052   "
        "(or llama.cpp's: ggml-rpc-server -H 10.0.0.2 -p 50052)",
        "client: llama-server -m m.gguf -ngl 81 -c 8192 --rpc 10.0.0.2:50052 -ts 32,49 -ctk q8_0 -ctv q8_0 -fa on"]


def _assigned_layers(path: Path, settings: object, report: object = None) -> list[str]:
    """llama.cpp's own "layer N assigned to device X" log lines, as device names in layer order."""
    import re

    from ggprec.llama_backend import load_model

    with load_model(path, settings) as lm:  # type: ignore[arg-type]
        found = [re.search(r"layer +(\d+) assigned to device (\S+),", line) for line in lm.log.text]
        return [m.group(2) for m in sorted((m for m in found if m), key=lambda m: int(m.group(1)))]


@pytest.mark.llama
@pytest.mark.slow
def test_llama_cpp_assigns_the_layers_layer_split_predicts(demo_model: Path, servers: tuple[str, str]) -> None:
    from ggprec.settings import RuntimeSettings

    for ngl, split in ((22, (2.0, 1.0)), (7, (1.0, 3.0)), (31, (1.0, 1.0))):
        settings = RuntimeSettings(n_ctx=256, n_threads=1, n_gpu_layers=ngl, rpc_servers=servers, tensor_split=split)
        logged = rpc.isolated(_assigned_layers, demo_model, settings, servers=servers)
        assert logged == assign_layers(30, ngl, ["RPC0", "RPC1"], list(split)), (ngl, split)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("ngl", [1, 30])
def test_one_device_holds_what_the_single_gpu_rule_offloads(demo_model: Path, servers: tuple[str, str],
                                                           ngl: int) -> None:
    """A loopback server is a real offload device: -ngl 1 gives it the output layer only (SmolLM2's tied
    head is a copy of token_embd, plus output_norm), -ngl n_layer every block but block 0 and the output
    layer; memory.predict's single-GPU rule must name the same bytes."""
    from ggprec.gguf_info import read_gguf
    from ggprec.memory import predict
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    settings = RuntimeSettings(n_ctx=256, n_threads=1, n_gpu_layers=ngl, rpc_servers=servers[:1])
    allocated = run_benchmark(demo_model, settings, pp=8, tg=0, reps=1).allocation.buffers[f"model:RPC0[{servers[0]}]"]
    info = read_gguf(demo_model)
    head = info.tensor("token_embd.weight").n_bytes + info.tensor("output_norm.weight").n_bytes
    blocks = sum(t.n_bytes for t in info.tensors if t.layer is not None and t.layer >= 1)
    predicted = predict(info, settings.with_overrides(rpc_servers=())).buffers["model:CUDA0"]
    assert predicted == {1: head, 30: head + blocks}[ngl]
    assert allocated == pytest.approx(predicted, abs=0.005 * 2**20)  # the load log prints MiB to 2 decimals


@pytest.mark.llama
def test_without_rpc_in_the_build_every_rpc_command_names_the_fix(monkeypatch: pytest.MonkeyPatch, demo_model: Path,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(rpc.backend, "supports_rpc", lambda: False)  # require_rpc asks its own module
    for args in (["run", str(demo_model), "--rpc", f"{LOOPBACK}:1", "--db", str(tmp_path / "h.db")],
                 ["eval", str(demo_model), "--reference", str(demo_model), "--rpc", f"{LOOPBACK}:1",
                  "--db", str(tmp_path / "h.db")],
                 ["rpc-server", "--port", str(free_port())]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, args
        assert r.stderr.strip().splitlines() == [f"ggprec: error: this llama-cpp-python has no RPC backend; "
                                                 f"{rpc.INSTALL_FIX}"], args


def test_a_server_named_by_host_name_survives_the_terminal_tables() -> None:
    from rich.console import Console

    from ggprec.alloc import Allocation
    from ggprec.printers import allocation_table

    key = "model:RPC0[gpu-box:50052]"  # rich would read "[gpu-box:50052]" as markup
    console = Console(width=120, record=True)
    console.print(allocation_table(Allocation({key: 1 << 20}), {key: 1 << 20}))
    assert key in console.export_text()


@pytest.mark.llama
@pytest.mark.slow
def test_overrides_move_weights_and_compute_between_devices_as_predicted(demo_model: Path,
                                                                         servers: tuple[str, str]) -> None:
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    for overrides in ((r"blk\.2[0-9]\.attn=CPU",), (rf"blk\.(3|4)\.=RPC0[{servers[1]}]", r"blk\.29\.ffn=CPU")):
        from ggprec.tensor_overrides import parse_overrides

        settings = RuntimeSettings(n_ctx=512, n_threads=1, n_gpu_layers=99, rpc_servers=servers,
                                   override_tensor=parse_overrides(overrides))
        r = run_benchmark(demo_model, settings, pp=8, tg=0, reps=1)
        assert r.predicted is not None and r.predicted.keys() == r.allocation.buffers.keys()
        for key, n in r.allocation.buffers.items():
            if key != "output:CPU":  # 0.19 MiB logged with two decimals
                assert r.predicted[key] == pytest.approx(n, rel=0.02), (overrides, key)
