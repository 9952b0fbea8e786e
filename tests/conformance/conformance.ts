// conformance: the SDK conformance service in AssemblyScript (tests/conformance/README.md is its specification; the
// same service exists in C, Zig and Rust, and tests/test_conformance.py expects the same answers from each).
//
// An actor with WebSockets, on routes "/conf/{key}" and "/conf/{key}/..." (the README has its manifest). Built by
// `make examples` into examples/build/conformance_assemblyscript.wasm.
import * as mm from "../../sdk/assemblyscript/assembly/micromono";
export { mm_abi_version, mm_inbox, mm_handle } from "../../sdk/assemblyscript/assembly/micromono";

const LANG = "assemblyscript";

/** An answer with an empty body: no content-type (the README's last rule). */
function empty(res: mm.HttpResponse, status: i32): void {
  res.status = status;
}

function failed(res: mm.HttpResponse, what: string, code: i32): void {
  res.status = 502;
  res.body.append(what).append(" failed: ").appendInt(code);
}

function echo(req: mm.HttpRequest, res: mm.HttpResponse): void {
  if (req.body.length > 0) {
    const type = req.header("content-type");
    if (type != null) res.header("content-type", type);
    else res.header("content-type", "application/octet-stream");
  }
  res.header("x-conformance", LANG);
  res.setBodyRef(req.body);
}

function callPeer(req: mm.HttpRequest, res: mm.HttpResponse): void {
  const reply = mm.call("peer", req.body);
  if (reply == null) return failed(res, "call", mm.lastCode());
  res.setBodyRef(reply);
}

function sendSelf(req: mm.HttpRequest, res: mm.HttpResponse): void {
  const rc = mm.send("conformance/" + mm.actorKey()!.toString(), req.body);
  if (rc != mm.OK) return failed(res, "send", rc);
  empty(res, 202);
}

function kv(req: mm.HttpRequest, res: mm.HttpResponse, name: mm.Bytes): void {
  if (req.method.equals("PUT")) {
    if (mm.kv.put(name, req.body) != mm.OK) return mm.fail(500); // not part of the spec: a storage failure
    return empty(res, 204);
  }
  if (req.method.equals("GET")) {
    const value = mm.kv.get(name);
    if (value == null) {
      if (mm.lastCode() == mm.ERR_NOT_FOUND) return empty(res, 404);
      return mm.fail(500);
    }
    return res.setBodyRef(value);
  }
  if (req.method.equals("DELETE")) {
    const rc = mm.kv.delete(name);
    if (rc < 0) return mm.fail(500);
    return empty(res, rc == 1 ? 204 : 404);
  }
  empty(res, 404);
}

mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {
  // The path is /conf/<key>/<what>: skip the key, whatever it holds.
  if (!req.path.startsWith("/conf/")) return empty(res, 404);
  const afterPrefix = req.path.slice(6);
  let slash = afterPrefix.indexOf(0x2f);
  if (slash < 0) slash = afterPrefix.length;
  const what = afterPrefix.slice(slash);

  const post = req.method.equals("POST");
  if (post && what.equals("/echo")) return echo(req, res);
  if (post && what.equals("/call")) return callPeer(req, res);
  if (post && what.equals("/send")) return sendSelf(req, res);
  if (post && what.equals("/trap")) unreachable();
  if (post && what.equals("/log")) {
    mm.log(mm.LOG_INFO, req.body);
    return empty(res, 204);
  }
  if (what.startsWith("/kv/") && what.length > 4) return kv(req, res, what.slice(4));
  empty(res, 404);
});

mm.onCall((req: mm.Bytes, reply: mm.Buf): void => {
  reply.append(req);
});

mm.onMessage((msg: mm.Bytes): void => {
  if (mm.kv.put("sent", msg) != mm.OK) mm.fail(500);
});

// No onWsOpen or onWsClose: without them the SDK accepts every connection and ignores its close.
mm.onWsMessage((conn: u64, type: i32, data: mm.Bytes): void => {
  if (type == mm.ws.TEXT) {
    mm.ws.send(conn, mm.ws.TEXT, data);
    mm.ws.publish(mm.ws.TEXT, data);
  } else {
    mm.ws.send(conn, mm.ws.BINARY, data);
  }
});
