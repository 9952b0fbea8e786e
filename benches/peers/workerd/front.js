// bench_peers' workerd caller: `POST /run` with body N makes N sequential calls to the `echo` worker through the
// service binding ECHO, with `fetch` (`POST /echo`) or with JS RPC (`ECHO.echo(payload)`), as the text binding MODE
// says. Each call sends the same 64-byte payload and checks the reply has 64 bytes. Answers 200 `ok N`, 400 for a
// body that is not 1-9 ASCII digits, 500 naming the failed call; anything but `POST /run` is 404. The same contract
// as benches/peers/*_front.py and benches/fixtures/call_front.wat.
const PAYLOAD = new TextEncoder().encode("micromono bench_call payload: 64 bytes, echoed by service 'back'");

async function viaFetch(echo) {
  const resp = await echo.fetch("http://echo/echo", { method: "POST", body: PAYLOAD });
  const reply = await resp.arrayBuffer();
  return resp.status === 200 && reply.byteLength === PAYLOAD.byteLength
    ? null
    : `status ${resp.status}, ${reply.byteLength} bytes`;
}

async function viaRpc(echo) {
  const reply = await echo.echo(PAYLOAD);
  return reply instanceof Uint8Array && reply.byteLength === PAYLOAD.byteLength ? null : `reply ${reply}`;
}

export default {
  async fetch(request, env) {
    if (request.method !== "POST" || new URL(request.url).pathname !== "/run") {
      return new Response("not found", { status: 404 });
    }
    const text = await request.text();
    if (!/^[0-9]{1,9}$/.test(text)) {
      return new Response("bad body: expected N as 1-9 ASCII digits", { status: 400 });
    }
    const n = Number(text);
    const call = env.MODE === "rpc" ? viaRpc : viaFetch;
    for (let i = 0; i < n; i++) {
      let failure;
      try {
        failure = await call(env.ECHO);
      } catch (err) {
        failure = String(err);
      }
      if (failure !== null) {
        return new Response(`call failed: ${failure} at call ${i}`, { status: 500 });
      }
    }
    return new Response(`ok ${n}`);
  },
};
