// {{name}}: a micromono actor in AssemblyScript (made by `micromono new --keyed`).
//
// An actor (`kind = "actor"` in services.toml): each key, the last segment of /{{name}}/<key>, has its own instance
// and its own storage.
//
//   GET /{{name}}/<key>   counts a visit to <key>; 200, text/plain: `{{name}} <key>: <visits>`
//   other methods        405 (with `allow: GET`)
//
// The count lives in the actor's key-value storage under "visits", read on every request: storage is the truth,
// and the instance may be closed and revived at any time. The write commits when the handler returns. A storage
// failure answers 500 (507 when the actor is over its storage_limit) with the host's message.
import * as mm from "micromono/assembly/micromono";
export { mm_abi_version, mm_inbox, mm_handle } from "micromono/assembly/micromono";

mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {
  res.header("content-type", "text/plain");
  if (!req.method.equals("GET")) {
    res.status = 405;
    res.header("allow", "GET");
    return;
  }
  let visits = mm.kv.getInt("visits"); // 0 for a new key, and when reading failed: lastCode() tells them apart
  let code = visits == 0 && mm.lastCode() != mm.ERR_NOT_FOUND ? mm.lastCode() : mm.OK;
  if (code == mm.OK) {
    visits += 1;
    code = mm.kv.putInt("visits", visits);
  }
  if (code != mm.OK) {
    res.status = code == mm.ERR_STORAGE_FULL ? 507 : 500;
    res.body.append("storage error: ");
    res.body.append(mm.lastError());
    return;
  }
  res.body.append("{{name}} ");
  const key = mm.actorKey();
  if (key != null) res.body.append(key);
  res.body.append(": ");
  res.body.appendInt(visits);
});
