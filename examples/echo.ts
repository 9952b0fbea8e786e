// echo: returns what it is sent (micromono example service, AssemblyScript): examples/echo.c's twin, built into
// build/echo_assemblyscript.wasm.
//
//   HTTP (route /echo)  200 with the request body; content-type copied from the request, else
//                       application/octet-stream.
//   CALL                replies the payload unchanged.
//   MESSAGE             accepted and dropped.
// Stateless: any number of instances.
import * as mm from "../sdk/assemblyscript/assembly/micromono";
export { mm_abi_version, mm_inbox, mm_handle } from "../sdk/assemblyscript/assembly/micromono";

mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {
  const type = req.header("content-type");
  if (type != null) res.header("content-type", type);
  else res.header("content-type", "application/octet-stream");
  res.setBodyRef(req.body); // the request outlives the handler: no copy here
});

mm.onCall((req: mm.Bytes, reply: mm.Buf): void => {
  reply.append(req);
});

mm.onMessage((msg: mm.Bytes): void => {});
