// bench_actors' workerd peer: a durable counter per name, as a SQLite-backed Durable Object.
//
// `POST /counter/{name}` adds 1 to the counter of that name and answers the new value as decimal text (200);
// `GET /counter/{name}` answers the current value (0 for a name never seen). The same contract as micromono's
// examples/build/counter.wasm (see benches/bench_actors.py). Each name is its own object,
// `env.COUNTER.idFromName(name)`; its value is one row of its own SQLite database (`enableSql = true`, stored on
// local disk: do_counter.capnp), and workerd does not answer a write until it is durable.
//
// `GET /stats` answers `activations=N`: how many Counter objects this process has constructed so far. An object is
// constructed on its first request after start-up and again after workerd has evicted it (idle about 10 s), so the
// bench reads it before and after a measured window to count the activations inside it.
// Anything else is 404; a name must be 1-512 bytes.
import { DurableObject } from "cloudflare:workers";

let activations = 0;

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    activations += 1;
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)");
  }

  async fetch(request) {
    if (request.method === "POST") {
      const row = this.sql
        .exec(
          "INSERT INTO counter (id, value) VALUES (0, 1) " +
            "ON CONFLICT (id) DO UPDATE SET value = value + 1 RETURNING value",
        )
        .one();
      return new Response(String(row.value));
    }
    const rows = this.sql.exec("SELECT value FROM counter WHERE id = 0").toArray();
    return new Response(String(rows.length ? rows[0].value : 0));
  }
}

const PREFIX = "/counter/";

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (request.method === "GET" && path === "/stats") {
      return new Response(`activations=${activations}`);
    }
    const name = path.startsWith(PREFIX) ? decodeURIComponent(path.slice(PREFIX.length)) : "";
    if (!name || name.length > 512 || (request.method !== "GET" && request.method !== "POST")) {
      return new Response("not found", { status: 404 });
    }
    return env.COUNTER.get(env.COUNTER.idFromName(name)).fetch(request);
  },
};
