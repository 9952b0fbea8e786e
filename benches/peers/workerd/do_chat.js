// bench_ws' workerd peer: a chat room per name as a Durable Object, on the WebSocket Hibernation API.
//
// `GET /chat/{name}` with `Upgrade: websocket` joins the room `name` (`env.ROOM.idFromName(name)`): the object
// accepts the socket with `ctx.acceptWebSocket` (hibernatable) and `webSocketMessage` publishes each message a client
// sends to every client of the room (`ctx.getWebSockets()`), numbered by a counter in the object, in micromono's
// frame shape (docs/stream.md): text as `{"seq":N,"data":"<text>"}`, binary as N in 8 bytes little-endian, then the
// bytes. The last RING frames are kept, so `?since=N` resumes as docs/stream.md says: the frames after N, or one
// `{"reset":true,"seq":<last>}` when N is older than the ring or newer than the last.
//
// The counter and the ring live in the object's memory, as micromono's ring lives in the daemon's memory, and are not
// written to storage. Hibernation discards them: a room woken from hibernation starts again at 1 and a client
// resuming into it gets a reset, as one resuming across a micromono daemon restart does (the bench keeps its rooms
// busy while it measures them). `GET /stats` answers `activations=N`, the Room objects constructed so far (a
// hibernated room is constructed again when a message wakes it). Anything else is 404, or 426 without the upgrade.
import { DurableObject } from "cloudflare:workers";

const RING = 1000; // micromono's default stream_buffer
const PREFIX = "/chat/";
let activations = 0;

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    activations += 1;
    this.seq = 0;
    this.ring = new Array(RING); // frame of seq s at s % RING; holds max(1, seq - RING + 1) .. seq
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
    const seq = ++this.seq;
    let frame;
    if (typeof message === "string") {
      frame = JSON.stringify({ seq, data: message });
    } else {
      frame = new Uint8Array(8 + message.byteLength);
      new DataView(frame.buffer).setBigUint64(0, BigInt(seq), true);
      frame.set(new Uint8Array(message), 8);
    }
    this.ring[seq % RING] = frame;
    for (const peer of this.ctx.getWebSockets()) {
      try {
        peer.send(frame);
      } catch {
        // a socket closing under us: its webSocketClose follows
      }
    }
  }

  async webSocketClose(ws, code, reason) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }
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
