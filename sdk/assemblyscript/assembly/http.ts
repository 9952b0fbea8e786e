// http.ts: the HTTP encoding of docs/abi.md: decoding a request (kind HTTP) into HttpRequest and encoding the
// HttpResponse a handler builds. One request and one response object exist, reused for every request: the
// request fields are views into the inbox and the response builds in SDK-owned buffers.

import { alloc, asciiEquals, Buf, Bytes, newBuf, rawLen, rawOf, rawPtr, viewOf } from "./bytes";

function newBytes(): Bytes {
  return changetype<Bytes>(heap.alloc(offsetof<Bytes>()));
}

/** A header of HttpRequest.headers(): its name as the client wrote it and its value without surrounding spaces. */
@final @unmanaged
export class HeaderIterator {
  block: Bytes = changetype<Bytes>(0);
  pos: i32 = 0;
  name: Bytes = changetype<Bytes>(0);
  value: Bytes = changetype<Bytes>(0);

  /** Moves to the next header (sets `name` and `value`, fresh views); false after the last. */
  next(): bool {
    const block = this.block.ptr;
    const end = this.block.len;
    const i = this.pos;
    if (i >= end) return false;
    let eol = i;
    while (eol + 1 < end && !(load<u8>(block + eol) == 13 && load<u8>(block + eol + 1) == 10)) eol++;
    if (eol + 1 >= end) return false;
    let colon = i;
    while (colon < eol && load<u8>(block + colon) != 58) colon++;
    let v = colon < eol ? colon + 1 : eol;
    let w = eol;
    while (v < w && isOws(load<u8>(block + v))) v++;
    while (w > v && isOws(load<u8>(block + w - 1))) w--;
    this.name = viewOf(block + i, colon - i);
    this.value = viewOf(block + v, w - v);
    this.pos = eol + 2;
    return true;
  }
}

@inline function isOws(c: u8): bool {
  return c == 32 || c == 9;
}

/**
 * A decoded HTTP request. Every field is a view into the request the host wrote: valid until the handler returns.
 * `path` is raw (percent-encoded, starts with '/'); `query` has no '?'.
 */
@final @unmanaged
export class HttpRequest {
  method: Bytes = newBytes();
  path: Bytes = newBytes();
  query: Bytes = newBytes();
  body: Bytes = newBytes();
  /** The header lines as received (docs/abi.md); read them with header() or headers(). */
  headerBlock: Bytes = newBytes();
  headerCount: i32 = 0;

  /**
   * The value of the first header called `name` (compared ASCII-case-insensitively: names arrive as the client
   * wrote them), without the spaces or tabs around it; null when there is none.
   */
  header(name: string): Bytes | null {
    const it = this.headers();
    while (it.next()) if (asciiEquals(it.name.ptr, it.name.len, name, true)) return it.value;
    return null;
  }

  /** All headers in order: `const it = req.headers(); while (it.next()) use(it.name, it.value);` */
  headers(): HeaderIterator {
    const it = changetype<HeaderIterator>(alloc(offsetof<HeaderIterator>()));
    it.block = this.headerBlock;
    it.pos = 0;
    it.name = changetype<Bytes>(0);
    it.value = changetype<Bytes>(0);
    return it;
  }
}

/** The request the SDK decodes every HTTP request into. */
export const request = changetype<HttpRequest>(heap.alloc(offsetof<HttpRequest>()));
request.method = newBytes();
request.path = newBytes();
request.query = newBytes();
request.body = newBytes();
request.headerBlock = newBytes();

@inline function rd16(p: usize): i32 {
  return <i32>load<u16>(p);
}

/** Decodes `len` bytes at `p` into `request`; false when they are not a well-formed request. */
export function decodeRequest(p: usize, len: i32): bool {
  if (len < 16) return false;
  const methodLen = rd16(p);
  const pathLen = load<u32>(p, 4);
  const queryLen = load<u32>(p, 8);
  const bodyLen = load<u32>(p, 12);
  const rest = <u64>(len - 16);
  if (<u64>methodLen + <u64>pathLen + <u64>queryLen + <u64>bodyLen > rest) return false;
  let q = p + 16;
  setView(request.method, q, methodLen);
  q += methodLen;
  setView(request.path, q, <i32>pathLen);
  q += pathLen;
  setView(request.query, q, <i32>queryLen);
  q += queryLen;
  const end = p + len - bodyLen;
  setView(request.body, end, <i32>bodyLen);
  const block = <i32>(end - q);
  setView(request.headerBlock, q, block);
  if (block != 0 && (block < 2 || load<u8>(end - 2) != 13 || load<u8>(end - 1) != 10)) return false;
  let lines = 0;
  for (let i: usize = q; i + 1 < end; i++) if (load<u8>(i) == 13 && load<u8>(i + 1) == 10) lines++;
  request.headerCount = lines;
  return true;
}

@inline function setView(b: Bytes, ptr: usize, len: i32): void {
  b.ptr = ptr;
  b.len = len;
}

/**
 * The response a handler fills in: `status` (200 unless set), headers added with header(), and the body, appended
 * to `body` or set with setBody()/setBodyRef(). The SDK passes the handler an empty one and encodes it afterwards.
 * The host writes content-length, connection and date itself and drops those headers (and transfer-encoding).
 */
@final @unmanaged
export class HttpResponse {
  /** 100-599; anything else makes the host answer 500. */
  status: i32 = 200;
  /** The body, SDK-owned and empty on entry. */
  body: Buf = changetype<Buf>(0);
  head: Buf = changetype<Buf>(0);
  headerCount: i32 = 0;
  refPtr: usize = 0;
  refLen: i32 = -1;
  invalid: bool = false;

  /** Adds a header; `value` is a string, Bytes, ArrayBuffer, Uint8Array or StaticArray<u8>. Names and values are at
   *  most 65535 bytes (a longer one fails the request with 500). Headers may be added before or after the body. */
  header<T>(name: string, value: T): void {
    const head = this.head;
    const at = head.len;
    head.reserve(4);
    head.len += 4;
    head.append(name);
    const nameLen = head.len - at - 4;
    rawOf<T>(value);
    const valueLen = rawLen;
    head.appendRaw(rawPtr, valueLen);
    if (nameLen > 0xffff || valueLen > 0xffff || this.headerCount >= 0xffff) {
      head.len = at;
      this.invalid = true;
      return;
    }
    store<u16>(head.ptr + at, <u16>nameLen);
    store<u16>(head.ptr + at, <u16>valueLen, 2);
    this.headerCount++;
  }

  /** Replaces the body with a copy of `v`. */
  setBody<T>(v: T): void {
    this.refLen = -1;
    this.body.clear();
    this.body.append<T>(v);
  }

  /** Uses `b` as the body without copying it now: it must stay valid until the handler returns (request data
   *  qualifies). The SDK copies it once into the reply. */
  setBodyRef(b: Bytes): void {
    this.refPtr = b.ptr;
    this.refLen = b.len;
  }
}

/** The response every HTTP handler fills in. */
export const response = changetype<HttpResponse>(heap.alloc(offsetof<HttpResponse>()));
response.body = newBuf();
response.head = newBuf();

/** Empties `response` for the next handler. */
export function resetResponse(): void {
  const res = response;
  res.status = 200;
  res.body.len = 0;
  res.head.reserve(4);
  res.head.len = 4;
  res.headerCount = 0;
  res.refLen = -1;
  res.invalid = false;
}

/** Encodes `response`: the buffer holding the reply, or null when it cannot be encoded (a header too long). */
export function finishResponse(): Buf | null {
  const res = response;
  if (res.invalid) return null;
  const head = res.head;
  const body = res.body;
  const status = res.status;
  store<u16>(head.ptr, <u16>(status >= 0 && status <= 0xffff ? status : 0));
  store<u16>(head.ptr, <u16>res.headerCount, 2);
  if (res.refLen >= 0) return head.appendRaw(res.refPtr, res.refLen);
  const headLen = head.len;
  const bodyLen = body.len;
  // A small body is appended to the header block; a large one is slid up and the header block put in front of it,
  // so that it needs one buffer of its size, not two.
  if (bodyLen <= 4096) return head.appendRaw(body.ptr, bodyLen);
  body.reserve(headLen);
  memory.copy(body.ptr + headLen, body.ptr, bodyLen);
  memory.copy(body.ptr, head.ptr, headLen);
  body.len += headLen;
  return body;
}
