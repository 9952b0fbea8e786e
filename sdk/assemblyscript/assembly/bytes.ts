// bytes.ts: the SDK's memory. Owns the per-request arena, the `Bytes` view and the `Buf` builder, the conversion of
// the types a service passes in (string, Bytes, ArrayBuffer, Uint8Array, StaticArray<u8>) to raw bytes, and the
// status of the last SDK function (lastCode, the local error text).
//
// None of it is garbage-collected: `Bytes` and `Buf` are @unmanaged, so the request path allocates no managed
// object, and the SDK works the same under every AssemblyScript runtime (incremental, minimal or stub).

import * as host from "./host";

// ---------------------------------------------------------------------------------------------------------------
// Status of the last SDK function
// ---------------------------------------------------------------------------------------------------------------

/** The code of the last SDK function that failed or found nothing (0 after one that succeeded): see lastCode(). */
export let status: i32 = 0;
/** A failure the SDK detected itself (the host's last_error knows nothing of it), or null. */
export let localError: string | null = null;

/** Records the result of a host import: `rc` when it is negative (a host error), else 0. */
@inline export function settleStatus(rc: i32): i32 {
  if (rc < 0) {
    status = rc;
    localError = null; // the host's last_error now describes the newest failure
    return rc;
  }
  status = 0;
  return 0;
}

/** What every entry into the guest starts with: no status left from the previous one. */
@inline export function resetStatus(): void {
  status = 0;
  localError = null;
}

export function failLocally(code: i32, why: string): i32 {
  status = code;
  localError = why;
  return code;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-request arena: a chain of raw chunks, reset on every entry. The oldest chunk is kept for reuse; chunks added
// during a request (large call replies) are freed at the next entry. Chunk layout: prev, cap, used, then the data.
// ---------------------------------------------------------------------------------------------------------------

const ARENA_CHUNK: usize = 64 * 1024;
const CHUNK_HEADER: usize = 16; // three usize fields, rounded up so that the data is 8-byte aligned
/** mm.call starts a new chunk if less than this is free, to avoid take_reply. */
export const CALL_MIN_SPACE: usize = 16 * 1024;
/** The same for storage reads, whose results are mostly small. */
export const READ_MIN_SPACE: usize = 4 * 1024;

let arena: usize = 0; // the newest chunk
/** Free bytes at the pointer arenaSpace last returned. */
export let arenaAvail: usize = 0;

export function arenaReset(): void {
  let c = arena;
  if (c == 0) return;
  let prev = load<usize>(c);
  while (prev != 0) {
    heap.free(c);
    c = prev;
    prev = load<usize>(c);
  }
  store<usize>(c, 0, 8); // used
  arena = c;
}

/** The free space of the newest chunk if at least `min` bytes are free there, else a new chunk's. */
export function arenaSpace(min: usize): usize {
  let c = arena;
  if (c == 0 || load<usize>(c, 4) - load<usize>(c, 8) < min) {
    const cap = max(min, ARENA_CHUNK);
    c = heap.alloc(CHUNK_HEADER + cap);
    store<usize>(c, arena);
    store<usize>(c, cap, 4);
    store<usize>(c, 0, 8);
    arena = c;
  }
  const used = load<usize>(c, 8);
  arenaAvail = load<usize>(c, 4) - used;
  return c + CHUNK_HEADER + used;
}

/** Marks `n` bytes of the space arenaSpace returned as used, keeping the next allocation 8-byte aligned. */
export function arenaCommit(n: usize): void {
  const c = arena;
  const cap = load<usize>(c, 4);
  const used = (load<usize>(c, 8) + n + 7) & ~(<usize>7);
  store<usize>(c, used > cap ? cap : used, 8);
}

/** `size` bytes of per-request scratch memory, 8-byte aligned, reclaimed when the guest is next entered. */
export function alloc(size: usize): usize {
  const p = arenaSpace(size ? size : 1);
  arenaCommit(size);
  return p;
}

/** A new Bytes view in the arena. */
export function viewOf(ptr: usize, len: i32): Bytes {
  const b = changetype<Bytes>(alloc(offsetof<Bytes>()));
  b.ptr = ptr;
  b.len = len;
  return b;
}

// ---------------------------------------------------------------------------------------------------------------
// Raw bytes of what a service passes in
// ---------------------------------------------------------------------------------------------------------------

/** Set by rawOf: the bytes of its argument. Read them before the next rawOf. */
export let rawPtr: usize = 0;
export let rawLen: i32 = 0;

/**
 * Points rawPtr/rawLen at the bytes of `v`: a string (encoded as UTF-8 into the arena), a Bytes, an ArrayBuffer, a
 * Uint8Array or a StaticArray<u8> (no copy). Any other type is a compile-time error.
 */
@inline export function rawOf<T>(v: T): void {
  if (isString<T>()) {
    const s = changetype<string>(v);
    const units = s.length;
    const dst = arenaSpace(<usize>units * 3); // at most 3 UTF-8 bytes per UTF-16 unit
    const n = String.UTF8.encodeUnsafe(changetype<usize>(s), units, dst);
    arenaCommit(n);
    rawPtr = dst;
    rawLen = <i32>n;
  } else if (isNullable<T>() && changetype<usize>(v) == 0) {
    rawPtr = 0;
    rawLen = 0;
  } else if (v instanceof Bytes) {
    rawPtr = changetype<Bytes>(v).ptr;
    rawLen = changetype<Bytes>(v).len;
  } else if (v instanceof ArrayBuffer) {
    rawPtr = changetype<usize>(v);
    rawLen = changetype<ArrayBuffer>(v).byteLength;
  } else if (v instanceof Uint8Array) {
    rawPtr = changetype<Uint8Array>(v).dataStart;
    rawLen = changetype<Uint8Array>(v).byteLength;
  } else if (v instanceof StaticArray<u8>) {
    rawPtr = changetype<usize>(v);
    rawLen = changetype<StaticArray<u8>>(v).length;
  } else {
    ERROR("micromono: expected a string, Bytes, ArrayBuffer, Uint8Array or StaticArray<u8>");
  }
}

/** Whether `ptr[0..len)` equals the ASCII string `s` (compared ASCII-case-insensitively when `fold`). */
export function asciiEquals(ptr: usize, len: i32, s: string, fold: bool): bool {
  if (s.length != len) return false;
  const sp = changetype<usize>(s);
  for (let i = 0; i < len; i++) {
    let x = <u32>load<u8>(ptr + i);
    let y = <u32>load<u16>(sp + (<usize>i << 1));
    if (fold) {
      if (x - 65 < 26) x += 32;
      if (y - 65 < 26) y += 32;
    }
    if (x != y) return false;
  }
  return true;
}

function isAscii(s: string): bool {
  const sp = changetype<usize>(s);
  for (let i = 0, n = s.length; i < n; i++) if (load<u16>(sp + (<usize>i << 1)) >= 0x80) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------------------------------

/**
 * A borrowed, read-only byte string: `length` bytes at `ptr` in this module's memory. What the SDK hands out
 * (request fields, call replies, storage reads) is valid until the handler returns; copy it with toString(),
 * toArrayBuffer() or toUint8Array() to keep it longer.
 */
@final @unmanaged
export class Bytes {
  ptr: usize = 0;
  len: i32 = 0;

  /** A view of `v` (see Buf.append for the types), in per-request memory. */
  static of<T>(v: T): Bytes {
    rawOf<T>(v);
    return viewOf(rawPtr, rawLen);
  }

  get length(): i32 {
    return this.len;
  }

  /** The byte at `i` (0 <= i < length; a trap otherwise). */
  at(i: i32): u8 {
    if (<u32>i >= <u32>this.len) unreachable();
    return load<u8>(this.ptr + i);
  }

  /** Whether these bytes equal `v` (a string is compared with its UTF-8 encoding). */
  equals<T>(v: T): bool {
    if (isString<T>() && isAscii(changetype<string>(v))) {
      return asciiEquals(this.ptr, this.len, changetype<string>(v), false);
    }
    rawOf<T>(v);
    return rawLen == this.len && memory.compare(this.ptr, rawPtr, rawLen) == 0;
  }

  /** Whether these bytes begin with `v`. */
  startsWith<T>(v: T): bool {
    rawOf<T>(v);
    return rawLen <= this.len && memory.compare(this.ptr, rawPtr, rawLen) == 0;
  }

  /** The index of the first `byte` at or after `from`, or -1. */
  indexOf(byte: u8, from: i32 = 0): i32 {
    for (let i = max(from, 0); i < this.len; i++) if (load<u8>(this.ptr + i) == byte) return i;
    return -1;
  }

  /** The bytes from `start` to `end` (clamped to the view; negative values count from the end), no copy. */
  slice(start: i32 = 0, end: i32 = i32.MAX_VALUE): Bytes {
    const n = this.len;
    const a = start < 0 ? max(n + start, 0) : min(start, n);
    const b = end < 0 ? max(n + end, 0) : min(end, n);
    return viewOf(this.ptr + a, b > a ? b - a : 0);
  }

  /** Whether the bytes are valid UTF-8 (what toString() decodes without replacement characters). */
  isUtf8(): bool {
    return isValidUtf8(this.ptr, this.len);
  }

  /** The bytes decoded as UTF-8 (invalid sequences become U+FFFD). A managed string: allocates. */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.ptr, <usize>this.len);
  }

  /** A managed copy. */
  toArrayBuffer(): ArrayBuffer {
    const out = new ArrayBuffer(this.len);
    memory.copy(changetype<usize>(out), this.ptr, this.len);
    return out;
  }

  /** A managed copy. */
  toUint8Array(): Uint8Array {
    const out = new Uint8Array(this.len);
    memory.copy(out.dataStart, this.ptr, this.len);
    return out;
  }
}

/** Whether `ptr[0..len)` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF). */
export function isValidUtf8(ptr: usize, len: i32): bool {
  let i = 0;
  while (i < len) {
    const c = <u32>load<u8>(ptr + i);
    if (c < 0x80) {
      i++;
      continue;
    }
    let n = 0;
    let lo: u32 = 0x80;
    let hi: u32 = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c == 0xe0) lo = 0xa0;
      else if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c == 0xf0) lo = 0x90;
      else if (c == 0xf4) hi = 0x8f;
    } else return false;
    if (i + n >= len) return false; // truncated sequence
    const c1 = <u32>load<u8>(ptr + i + 1);
    if (c1 < lo || c1 > hi) return false;
    for (let k = 2; k <= n; k++) {
      const ck = <u32>load<u8>(ptr + i + k);
      if (ck < 0x80 || ck > 0xbf) return false;
    }
    i += n + 1;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Buf
// ---------------------------------------------------------------------------------------------------------------

const HEX = "0123456789abcdef";

/**
 * A growable byte buffer in raw memory: the reply of a call handler and the body of an HTTP response. The SDK owns
 * and reuses them (a handler gets them empty), so appending costs no allocation once they have grown. Every append
 * returns the buffer, so appends chain: `reply.append("n=").appendInt(n)`.
 */
@final @unmanaged
export class Buf {
  ptr: usize = 0;
  len: i32 = 0;
  cap: i32 = 0;

  get length(): i32 {
    return this.len;
  }

  /** Makes room for `extra` more bytes and returns where they go (a trap when memory runs out). */
  reserve(extra: i32): usize {
    const need = this.len + extra;
    if (need > this.cap) {
      let cap = max(this.cap << 1, 64);
      if (cap < need) cap = need;
      this.ptr = this.ptr ? heap.realloc(this.ptr, cap) : heap.alloc(cap);
      this.cap = cap;
    }
    return this.ptr + this.len;
  }

  /** Appends `v`: a string (as UTF-8), a Bytes, an ArrayBuffer, a Uint8Array or a StaticArray<u8>. */
  append<T>(v: T): Buf {
    if (isString<T>()) {
      const s = changetype<string>(v);
      const dst = this.reserve(s.length * 3);
      this.len += <i32>String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, dst);
    } else {
      rawOf<T>(v);
      this.appendRaw(rawPtr, rawLen);
    }
    return this;
  }

  appendRaw(ptr: usize, len: i32): Buf {
    const dst = this.reserve(len);
    memory.copy(dst, ptr, len);
    this.len += len;
    return this;
  }

  appendByte(b: u8): Buf {
    store<u8>(this.reserve(1), b);
    this.len++;
    return this;
  }

  /** Appends `v` in decimal, with '-' when negative. */
  appendInt(v: i64): Buf {
    let u: u64 = v < 0 ? <u64>0 - <u64>v : <u64>v;
    let digits = 1;
    for (let t = u; t >= 10; t /= 10) digits++;
    const neg = v < 0 ? 1 : 0;
    const dst = this.reserve(digits + neg);
    if (neg) store<u8>(dst, 0x2d);
    let p = dst + neg + digits;
    do {
      store<u8>(--p, <u8>(0x30 + <i32>(u % 10)));
      u /= 10;
    } while (u);
    this.len += digits + neg;
    return this;
  }

  /** Appends `v` as a JSON string literal: quoted, with '"', '\\' and control characters escaped. */
  appendJsonString<T>(v: T): Buf {
    rawOf<T>(v);
    const s = rawPtr;
    const n = rawLen;
    let run = 0; // start of the current run of bytes that need no escaping
    this.appendByte(0x22);
    for (let i = 0; i < n; i++) {
      const c = load<u8>(s + i);
      if (c >= 0x20 && c != 0x22 && c != 0x5c) continue;
      this.appendRaw(s + run, i - run);
      run = i + 1;
      if (c == 0x22) this.append('\\"');
      else if (c == 0x5c) this.append("\\\\");
      else if (c == 0x0a) this.append("\\n");
      else if (c == 0x0d) this.append("\\r");
      else if (c == 0x09) this.append("\\t");
      else {
        this.append("\\u00");
        this.appendByte(<u8>HEX.charCodeAt(c >> 4));
        this.appendByte(<u8>HEX.charCodeAt(c & 15));
      }
    }
    this.appendRaw(s + run, n - run);
    return this.appendByte(0x22);
  }

  /** Empties the buffer; keeps its memory. */
  clear(): void {
    this.len = 0;
  }

  /** The contents as a view (valid until the buffer is next modified). */
  bytes(): Bytes {
    return viewOf(this.ptr, this.len);
  }

  /** The contents decoded as UTF-8. A managed string: allocates. */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.ptr, <usize>this.len);
  }
}

/** A new, empty Buf owned by the SDK for good (for the SDK's own reply buffers). */
export function newBuf(): Buf {
  const b = changetype<Buf>(heap.alloc(offsetof<Buf>()));
  b.ptr = 0;
  b.len = 0;
  b.cap = 0;
  return b;
}

/** Reads an import's result that the host wrote at `dst` (lent with `cap`), held for take_reply when longer. */
export function settle(n: i32, dst: usize, cap: usize): Bytes | null {
  if (n < 0) {
    settleStatus(n);
    return null;
  }
  if (<usize>n > cap) {
    // The result did not fit and the host holds it until the next import: fetch it into a chunk of its own.
    dst = arenaSpace(<usize>n);
    const got = host.take_reply(dst, n);
    if (got < 0) {
      settleStatus(got);
      return null;
    }
    n = got;
  }
  arenaCommit(<usize>n);
  status = 0;
  return viewOf(dst, n);
}

/** Lends the free end of the arena to an import (at least `min` bytes); the capacity is in arenaAvail. */
@inline export function lend(min: usize): usize {
  return arenaSpace(min);
}
