// bench_peers' workerd callee and ingress echo (see benches/bench_peers.py).
//
// HTTP: `POST /echo` answers 200 with the request body (content-length framed, with the content-type the other
// echoes send), whether the request comes through a service binding or workerd's own HTTP ingress; anything else
// is 404. JS RPC: `echo(payload)` returns the payload it was given.
import { WorkerEntrypoint } from "cloudflare:workers";

const HEADERS = { "content-type": "application/octet-stream" };

export default class Echo extends WorkerEntrypoint {
  async fetch(request) {
    if (request.method !== "POST" || new URL(request.url).pathname !== "/echo") {
      return new Response("not found", { status: 404 });
    }
    return new Response(await request.arrayBuffer(), { headers: HEADERS });
  }

  echo(payload) {
    return payload;
  }
}
