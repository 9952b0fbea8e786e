# workerd config of benches/bench_ws.py: a chat room per name as a Durable Object on the WebSocket Hibernation API
# (do_chat.js).
#   workerd serve do_chat.capnp chatConfig --socket-addr http=127.0.0.1:PORT --directory-path do-storage=DIR
# The bench always overrides the socket's address (the one written here is loopback too) and the storage directory.
# The rooms write nothing to storage (their counter and ring are in memory), but a Durable Object namespace needs
# one; it is SQLite on local disk, as in do_counter.capnp, so each room may leave DIR/bench-ws-chat/<id>.sqlite.
using Workerd = import "/workerd/workerd.capnp";

const chatConfig :Workerd.Config = (
  services = [
    (name = "chat", worker = .chatWorker),
    (name = "do-storage", disk = (path = "/nonexistent/bench-ws-storage", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "chat")],
);

const chatWorker :Workerd.Worker = (
  modules = [(name = "do_chat.js", esModule = embed "do_chat.js")],
  compatibilityDate = "2026-10-01",
  durableObjectNamespaces = [(className = "Room", uniqueKey = "bench-ws-chat", enableSql = true)],
  durableObjectStorage = (localDisk = "do-storage"),
  bindings = [(name = "ROOM", durableObjectNamespace = "Room")],
);
