// text: small text utilities over HTTP and calls (micromono example service, AssemblyScript).
//
//   POST /text/stats   200 {"bytes":B,"chars":C,"words":W,"lines":L} for the UTF-8 body: bytes, code points, runs of
//                      non-whitespace, and lines (newlines, plus one for a last line without one; 0 when empty)
//   POST /text/slug    200 text/plain: the body as a URL slug: ASCII letters lower-cased and digits kept, every run
//                      of anything else one '-', none at either end, at most 80 bytes (cut at a '-' when it can)
//   CALL               the payload's stats, as for /text/stats (application error 400 when it is not UTF-8)
// A body that is not UTF-8 gets 400, an unknown path 404, another method 405 (allow: POST); errors are JSON
// {"error":…,"message":…}. Stateless: any number of instances.
import * as mm from "../sdk/assemblyscript/assembly/micromono";
export { mm_abi_version, mm_inbox, mm_handle } from "../sdk/assemblyscript/assembly/micromono";

const MAX_SLUG = 80;

function isSpace(c: u8): bool {
  return c == 0x20 || (c >= 0x09 && c <= 0x0d); // space, \t \n \v \f \r
}

/** Appends the stats of `text` (valid UTF-8) as JSON. */
function stats(text: mm.Bytes, out: mm.Buf): void {
  let chars = 0;
  let words = 0;
  let newlines = 0;
  let inWord = false;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.at(i);
    if ((c & 0xc0) != 0x80) chars++; // every byte but a continuation byte starts a code point
    if (c == 0x0a) newlines++;
    if (isSpace(c)) inWord = false;
    else if (!inWord) {
      inWord = true;
      words++;
    }
  }
  const lines = n > 0 && text.at(n - 1) != 0x0a ? newlines + 1 : newlines;
  out.append('{"bytes":').appendInt(n).append(',"chars":').appendInt(chars);
  out.append(',"words":').appendInt(words).append(',"lines":').appendInt(lines).append("}");
}

/** Appends the slug of `text`. */
function slug(text: mm.Bytes, out: mm.Buf): void {
  const start = out.length;
  let dash = false; // a '-' is owed before the next letter or digit
  for (let i = 0; i < text.length; i++) {
    let c = text.at(i);
    if (c >= 0x41 && c <= 0x5a) c += 0x20; // A-Z
    if ((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39)) {
      if (dash && out.length > start) out.appendByte(0x2d);
      dash = false;
      out.appendByte(c);
    } else dash = true;
  }
  if (out.length - start > MAX_SLUG) {
    // Cut at the last '-' within the limit when there is one, so that no word is cut in half.
    let cut = start + MAX_SLUG;
    for (let i = cut; i > start; i--) {
      if (load<u8>(out.ptr + i) == 0x2d) {
        cut = i;
        break;
      }
    }
    out.len = cut;
  }
}

function error(res: mm.HttpResponse, status: i32, code: string, message: string): void {
  res.status = status;
  res.header("content-type", "application/json");
  res.body.append('{"error":"').append(code).append('","message":').appendJsonString(message).append("}");
}

mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {
  const path = req.path;
  const isStats = path.equals("/text/stats");
  if (!isStats && !path.equals("/text/slug")) return error(res, 404, "not_found", "no such route under /text/");
  if (!req.method.equals("POST")) {
    res.header("allow", "POST");
    return error(res, 405, "method_not_allowed", "use POST");
  }
  if (!req.body.isUtf8()) return error(res, 400, "bad_request", "the body is not UTF-8");
  if (isStats) {
    res.header("content-type", "application/json");
    stats(req.body, res.body);
  } else {
    res.header("content-type", "text/plain; charset=utf-8");
    slug(req.body, res.body);
  }
});

mm.onCall((req: mm.Bytes, reply: mm.Buf): void => {
  if (!req.isUtf8()) return mm.fail(400);
  stats(req, reply);
});
