// kv.ts: an actor's key-value storage (docs/abi.md "Actors"), imported by a service as `mm.kv`.
//
// Keys are 1 to 2048 bytes and values any size; keys and values are a string (stored as UTF-8), Bytes, ArrayBuffer,
// Uint8Array or StaticArray<u8>. Every write is part of the current request's transaction; reads see its own writes.
// Outside an actor each function fails with ERR_NOT_ACTOR.

import * as host from "./host";
import {
  alloc, arenaAvail, Buf, Bytes, failLocally, lend, newBuf, rawLen, rawOf, rawPtr, READ_MIN_SPACE, settle,
  settleStatus, viewOf,
} from "./bytes";

const ERR_INVALID = -15;

/** The value stored under `key`, or null: lastCode() is then ERR_NOT_FOUND when there is none, or the error. */
export function get<K>(key: K): Bytes | null {
  rawOf<K>(key);
  const kp = rawPtr;
  const kl = rawLen;
  const dst = lend(READ_MIN_SPACE);
  const cap = arenaAvail;
  return settle(host.kv_get(kp, kl, dst, <i32>cap), dst, cap);
}

/** Stores `value` (may be empty) under `key`: 0, ERR_STORAGE_FULL (nothing written) or ERR_INVALID. */
export function put<K, V>(key: K, value: V): i32 {
  rawOf<K>(key);
  const kp = rawPtr;
  const kl = rawLen;
  rawOf<V>(value);
  return settleStatus(host.kv_put(kp, kl, rawPtr, rawLen));
}

function del<K>(key: K): i32 {
  rawOf<K>(key);
  const rc = host.kv_delete(rawPtr, rawLen);
  settleStatus(rc);
  return rc;
}
/** Deletes `key`: 1 when a value was deleted, 0 when there was none, or a negative code. */
export { del as delete };

/**
 * The integer stored under `key` as decimal text ("42", "-7", so that it reads well in any tool); 0 when there is
 * none. lastCode() tells them apart: 0, ERR_NOT_FOUND, ERR_INVALID (the value is not a decimal i64) or the error.
 */
export function getInt<K>(key: K): i64 {
  const v = get<K>(key);
  if (v == null) return 0;
  const p = v.ptr;
  const n = v.len;
  const neg = n > 0 && load<u8>(p) == 0x2d;
  let i = neg ? 1 : 0;
  if (i >= n || n - i > 19) return invalid();
  let acc: u64 = 0;
  for (; i < n; i++) {
    const d = <u32>load<u8>(p + i) - 0x30;
    if (d > 9) return invalid();
    acc = acc * 10 + d;
  }
  if (acc > (neg ? <u64>0x8000000000000000 : <u64>i64.MAX_VALUE)) return invalid();
  return neg ? <i64>(<u64>0 - acc) : <i64>acc;
}

function invalid(): i64 {
  failLocally(ERR_INVALID, "kv.getInt: the stored value is not a decimal integer");
  return 0;
}

/** Stores `value` as decimal text under `key` (see getInt). */
export function putInt<K>(key: K, value: i64): i32 {
  scratch.clear();
  scratch.appendInt(value);
  return put<K, Bytes>(key, viewOf(scratch.ptr, scratch.len));
}

const scratch: Buf = newBuf();

/** Which entries list() returns. The defaults list every key; an empty string means "no bound". */
export class ListOptions {
  /** Only keys that start with it. */
  prefix: string = "";
  /** Only keys >= start. */
  start: string = "";
  /** Only keys < end. */
  end: string = "";
  /** At most this many entries; 0: no limit. */
  limit: u32 = 0;
  /** Largest key first. */
  reverse: bool = false;
}

/** The entries list() found: `while (it.next()) use(it.key, it.value);` */
@final @unmanaged
export class Iterator {
  /** The number of entries. */
  count: i32 = 0;
  /** The entries next() has not returned yet. */
  remaining: i32 = 0;
  pos: usize = 0;
  end: usize = 0;
  /** The current entry's key and value (fresh views, valid until the handler returns). */
  key: Bytes = changetype<Bytes>(0);
  value: Bytes = changetype<Bytes>(0);

  /** Moves to the next entry; false after the last. */
  next(): bool {
    if (this.remaining <= 0) return false;
    const p = this.pos;
    const kl = load<u32>(p);
    const vl = load<u32>(p, 4);
    this.key = viewOf(p + 8, <i32>kl);
    this.value = viewOf(p + 8 + kl, <i32>vl);
    this.pos = p + 8 + kl + vl;
    this.remaining--;
    return true;
  }
}

/** Lists entries in key order (bytewise), filtered by `options`; null on failure (lastCode() says which). */
export function list(options: ListOptions | null = null): Iterator | null {
  const o = options ? options : new ListOptions();
  const opts = scratch;
  opts.clear();
  opts.reserve(20);
  opts.len += 20;
  opts.append(o.prefix);
  const prefixLen = opts.len - 20;
  opts.append(o.start);
  const startLen = opts.len - 20 - prefixLen;
  opts.append(o.end);
  const endLen = opts.len - 20 - prefixLen - startLen;
  const p = opts.ptr;
  store<u32>(p, o.limit);
  store<u32>(p, o.reverse ? 1 : 0, 4);
  store<u32>(p, prefixLen, 8);
  store<u32>(p, startLen, 12);
  store<u32>(p, endLen, 16);
  const dst = lend(READ_MIN_SPACE);
  const cap = arenaAvail;
  const block = settle(host.kv_list(p, opts.len, dst, <i32>cap), dst, cap);
  if (block == null) return null;
  // Check the block once, so that next() never runs past it.
  const end = block.ptr + block.len;
  if (block.len < 4) return malformed();
  const count = load<u32>(block.ptr);
  let q = block.ptr + 4;
  for (let i: u32 = 0; i < count; i++) {
    if (end - q < 8) return malformed();
    const n = <u64>load<u32>(q) + <u64>load<u32>(q, 4);
    if (<u64>(end - q - 8) < n) return malformed();
    q += 8 + <usize>n;
  }
  const it = changetype<Iterator>(alloc(offsetof<Iterator>()));
  it.count = <i32>count;
  it.remaining = <i32>count;
  it.pos = block.ptr + 4;
  it.end = end;
  it.key = changetype<Bytes>(0);
  it.value = changetype<Bytes>(0);
  return it;
}

function malformed(): Iterator | null {
  failLocally(ERR_INVALID, "kv.list: the host's answer does not decode");
  return null;
}
