# workerd config of benches/bench_actors.py: the durable counter as a Durable Object (do_counter.js).
#   workerd serve do_counter.capnp counterConfig --socket-addr http=127.0.0.1:PORT --directory-path do-storage=DIR
# The bench always overrides the socket's address (the one written here is loopback too) and the storage directory:
# each object's SQLite database lands in DIR/bench-actors-counter/<id>.sqlite (+ -wal, -shm), with one
# metadata.sqlite for the namespace. localDisk is marked experimental in workerd's schema.
using Workerd = import "/workerd/workerd.capnp";

const counterConfig :Workerd.Config = (
  services = [
    (name = "counter", worker = .counterWorker),
    (name = "do-storage", disk = (path = "/nonexistent/bench-actors-storage", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "counter")],
);

const counterWorker :Workerd.Worker = (
  modules = [(name = "do_counter.js", esModule = embed "do_counter.js")],
  compatibilityDate = "2026-10-01",
  durableObjectNamespaces = [(className = "Counter", uniqueKey = "bench-actors-counter", enableSql = true)],
  durableObjectStorage = (localDisk = "do-storage"),
  bindings = [(name = "COUNTER", durableObjectNamespace = "Counter")],
);
