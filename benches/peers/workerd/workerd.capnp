# workerd configs of benches/bench_peers.py, one constant per variant:
#   workerd serve workerd.capnp fetchConfig --socket-addr http=127.0.0.1:PORT   front -> echo, service binding fetch
#   workerd serve workerd.capnp rpcConfig   --socket-addr http=127.0.0.1:PORT   front -> echo, service binding JS RPC
#   workerd serve workerd.capnp echoConfig  --socket-addr http=127.0.0.1:PORT   echo on workerd's own HTTP ingress
# The bench always overrides the socket's address; the one written here is loopback too.
using Workerd = import "/workerd/workerd.capnp";

const fetchConfig :Workerd.Config = (
  services = [(name = "front", worker = .frontFetch), (name = "echo", worker = .echo)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "front")],
);

const rpcConfig :Workerd.Config = (
  services = [(name = "front", worker = .frontRpc), (name = "echo", worker = .echo)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "front")],
);

const echoConfig :Workerd.Config = (
  services = [(name = "echo", worker = .echo)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "echo")],
);

const frontFetch :Workerd.Worker = (
  modules = [(name = "front.js", esModule = embed "front.js")],
  compatibilityDate = "2026-10-01",
  bindings = [(name = "ECHO", service = "echo"), (name = "MODE", text = "fetch")],
);

const frontRpc :Workerd.Worker = (
  modules = [(name = "front.js", esModule = embed "front.js")],
  compatibilityDate = "2026-10-01",
  bindings = [(name = "ECHO", service = "echo"), (name = "MODE", text = "rpc")],
);

const echo :Workerd.Worker = (
  modules = [(name = "echo.js", esModule = embed "echo.js")],
  compatibilityDate = "2026-10-01",
);
