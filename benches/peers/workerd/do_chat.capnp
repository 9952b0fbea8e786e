# workerd config of benches/bench_ws.py: a chat room per name as a Durable Object on the WebSocket Hibernation API
# (do_chat.js).
#   workerd serve do_chat.capnp chatConfig --socket-addr http=127.0.0.1:PORT --directory-path do-storage=DIR
# The bench always overrides the socket's address (the one written here is loopback too) and the storage directory.
# Each room keeps its history in its own SQLite database on local disk (`enableSql`), as micromono's room.zig does:
# DIR/bench-ws-chat/<id>.sqlite (+ -wal, -shm), and one metadata.sqlite for the namespace. localDisk is marked
# experimental in workerd's schema.
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
