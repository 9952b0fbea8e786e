// {{name}}: a micromono service in AssemblyScript (made by `micromono new`).
//
//   GET /{{name}}, or any path below it   200, text/plain: `hello from {{name}}`
//   other methods                        405 (with `allow: GET`)
//
// The SDK's micromono.ts lists the other handlers a service may register: mm.onCall for calls from other services
// (micromono.call), mm.onMessage for their messages (micromono.send).
import * as mm from "micromono/assembly/micromono";
export { mm_abi_version, mm_inbox, mm_handle } from "micromono/assembly/micromono";

mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {
  if (!req.method.equals("GET")) {
    res.status = 405;
    res.header("allow", "GET");
    return;
  }
  res.header("content-type", "text/plain");
  res.body.append("hello from {{name}}");
});
