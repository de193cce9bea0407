"""llama.cpp's RPC devices (ggml-rpc): a server per host, the client adds them as devices.

Three halves, each matching llama.cpp (vendored in llama-cpp-python 0.3.36, protocol 7.0.0):
- the server is llama.cpp's own `ggml_backend_rpc_start_server` (the RPC registry's extension, reached
  through `ggml_lib.proc_address`), protocol-compatible with `ggml-rpc-server`; it blocks for ever, so
  `serve()` runs it in a child process and stops it on a signal;
- `probe()` speaks the wire format in pure Python (request `cmd u8 | size u64 | payload`, answer
  `size u64 | payload`: HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY of ggml-rpc.cpp): llama.cpp's client
  aborts the process (SIGABRT) on an unreachable peer, a foreign port or a version mismatch, so every
  server is probed first and such a peer is a one-line GgprecError before anything loads;
- `add_servers()` registers the servers' devices in llama.cpp's registry (`ggml_backend_rpc_add_server`
  + `ggml_backend_register`), for `llama_model_params.devices`.

A peer that dies during inference also ends llama.cpp's client with SIGABRT: `isolated()` runs such work
in a forked child and turns an abort into one line (and a stalled peer into one after a timeout).

The protocol has no authentication: whoever reaches the port can allocate memory and run graphs on the
server. Servers bind to loopback unless told otherwise.

Modules: `wire` (endpoints and the pure-Python probe: no llama.cpp, the predict stack plans with it),
`backend` (this build's RPC backend through ctypes: registering servers, starting one), `server` (`ggprec
rpc-server`: the server in a child process), `isolation` (work in a forked child: a dead peer is one line).
"""

from .backend import INSTALL_FIX, add_servers, local_devices, registered, require_rpc, start_server, supports_rpc
from .isolation import STALL_TIMEOUT, isolated, stall_limit
from .server import check_listen, die_with_parent, serve, stop_child
from .wire import (
    DEFAULT_PORT,
    MAX_SERVERS,
    PROBE_TIMEOUT,
    PROTOCOL,
    SECURITY_NOTE,
    RpcDevice,
    RpcPeer,
    buffer_name,
    is_loopback,
    parse_endpoint,
    parse_servers,
    planned_devices,
    probe,
    probe_all,
)

__all__ = ["DEFAULT_PORT", "INSTALL_FIX", "MAX_SERVERS", "PROBE_TIMEOUT", "PROTOCOL", "SECURITY_NOTE", "STALL_TIMEOUT",
           "RpcDevice", "RpcPeer", "add_servers", "buffer_name", "check_listen", "die_with_parent", "is_loopback",
           "isolated", "local_devices", "parse_endpoint", "parse_servers", "planned_devices", "probe", "probe_all",
           "registered", "require_rpc", "serve", "stall_limit", "start_server", "stop_child", "supports_rpc"]
