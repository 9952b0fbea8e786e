// bench_ws' workerd peer: a chat room per name as a Durable Object, on the WebSocket Hibernation API, doing what
// micromono's examples/room.zig does for each message.
//
// `GET /chat/{name}` with `Upgrade: websocket` joins the room `name` (`env.ROOM.idFromName(name)`): the object
// accepts the socket with `ctx.acceptWebSocket` (hibernatable). `webSocketMessage` does what room.zig's
// handleWsMessage does: a text message is stored in the room's SQLite history (`INSERT INTO messages`, the retention
// alarm armed once) and published to every client of the room (`ctx.getWebSockets()`), numbered by a counter in the
// object, in micromono's frame shape (docs/stream.md): `{"seq":N,"data":"<text>"}`. workerd's output gate holds those
// frames until the insert is durable, as micromono's holds a publish until its actor's writes are. An empty message
// or one over 16 KiB is not stored and only its sender gets `{"error":"empty_message"}` (or "message_too_large");
// binary messages are ignored. The last RING frames are kept, so `?since=N` resumes as docs/stream.md says: the
// frames after N, or one `{"reset":true,"seq":<last>}` when N is older than the ring or newer than the last.
//
// The counter and the ring live in the object's memory, as micromono's ring lives in the daemon's memory; the
// history's ids are another count. Hibernation discards them: a room woken from hibernation numbers from 1 again
// and a client resuming into it gets a reset, as one resuming across a micromono daemon restart does (the bench
// keeps its rooms busy while it measures them). `GET /stats` answers `activations=N`, the Room objects constructed
// so far (a hibernated room is constructed again when a message wakes it). Anything else is 404, or 426 without
// the upgrade.
import { DurableObject } from "cloudflare:workers";

const RING = 1000; // micromono's default stream_buffer
const MAX_TEXT_BYTES = 16 * 1024; // room.zig's max_text_bytes
const RETENTION_MS = 24 * 60 * 60 * 1000; // room.zig's retention_ms
const PREFIX = "/chat/";
let activations = 0;

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    activations += 1;
    this.seq = 0;
    this.ring = new Array(RING); // frame of seq s at s % RING; holds max(1, seq - RING + 1) .. seq
    this.alarmChecked = false;
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, text TEXT NOT NULL)",
    );
  }

  async fetch(request) {
    const since = new URL(request.url).searchParams.get("since");
    if (since !== null && !/^[0-9]{1,15}$/.test(since)) {
      return new Response("bad since\n", { status: 400 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    if (since !== null) {
      // Before anything live: nothing can be published between these sends and the accept above (no await).
      const after = Number(since);
      const first = Math.max(1, this.seq - RING + 1);
      if (after >= first - 1 && after <= this.seq) {
        for (let s = after + 1; s <= this.seq; s++) server.send(this.ring[s % RING]);
      } else {
        server.send(JSON.stringify({ reset: true, seq: this.seq }));
      }
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    if (typeof message !== "string") return; // binary messages are not part of the chat
    const refusal = refused(message);
    if (refusal) {
      ws.send(JSON.stringify({ error: refusal }));
      return;
    }
    const now = Date.now();
    this.sql.exec("INSERT INTO messages (at_ms, text) VALUES (?, ?)", now, message);
    const seq = ++this.seq;
    const frame = JSON.stringify({ seq, data: message });
    this.ring[seq % RING] = frame;
    for (const peer of this.ctx.getWebSockets()) {
      try {
        peer.send(frame);
      } catch {
        // a socket closing under us: its webSocketClose follows
      }
    }
    if (!this.alarmChecked) {
      // room.zig asks on every message; once per activation is enough here (and cheaper for workerd)
      this.alarmChecked = true;
      if ((await this.ctx.storage.getAlarm()) === null) await this.ctx.storage.setAlarm(now + RETENTION_MS);
    }
  }

  async alarm() {
    const now = Date.now();
    this.sql.exec("DELETE FROM messages WHERE at_ms <= ?", now - RETENTION_MS);
    const left = this.sql.exec("SELECT count(*) AS n FROM messages").one().n;
    if (left > 0) await this.ctx.storage.setAlarm(now + RETENTION_MS);
  }

  async webSocketClose(ws, code, reason) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }
}

function refused(text) {
  if (text.length === 0) return "empty_message";
  if (text.length > MAX_TEXT_BYTES / 3 && new TextEncoder().encode(text).length > MAX_TEXT_BYTES) {
    return "message_too_large";
  }
  return null;
}

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (request.method === "GET" && path === "/stats") {
      return new Response(`activations=${activations}`);
    }
    const name = path.startsWith(PREFIX) ? decodeURIComponent(path.slice(PREFIX.length)) : "";
    if (!name || name.length > 512 || name.includes("/") || request.method !== "GET") {
      return new Response("not found\n", { status: 404 });
    }
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return new Response("expected a WebSocket upgrade\n", { status: 426 });
    }
    return env.ROOM.get(env.ROOM.idFromName(name)).fetch(request);
  },
};
