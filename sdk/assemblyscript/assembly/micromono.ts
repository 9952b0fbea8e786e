// micromono.ts: the AssemblyScript SDK for micromono services (guest ABI version 2, docs/abi.md). Built and tested
// with AssemblyScript 0.28.20, pinned in ../package.json.
//
// This module owns the guest side of the ABI for AssemblyScript: the `mm_abi_version`, `mm_inbox` and `mm_handle`
// exports (and `mm_schema_version`/`mm_migrate` for actors), the dispatch of each request to the service's handlers,
// and the calls to other services. A service imports it, registers its handlers at the top level and re-exports the
// ABI functions, which is how they become the module's exports:
//
//     import * as mm from "../sdk/assemblyscript/assembly/micromono";
//     export { mm_abi_version, mm_inbox, mm_handle } from "../sdk/assemblyscript/assembly/micromono";
//
//     mm.onHttp((req: mm.HttpRequest, res: mm.HttpResponse): void => {      // kind HTTP    (routes)
//       res.header("content-type", "text/plain");
//       res.body.append("hello ").append(req.path);
//     });
//     mm.onCall((req: mm.Bytes, reply: mm.Buf): void => {                   // kind CALL    (micromono.call)
//       if (req.length == 0) return mm.fail(400);                           // application error 400
//       reply.append(req);
//     });
//     mm.onMessage((msg: mm.Bytes): void => {});                            // kind MESSAGE (micromono.send)
//
// Every handler is optional; a request of a kind without one fails with application error 501 (except the
// WebSocket kinds: without a handler a connection is accepted and its messages and close are ignored). Handlers
// return nothing: mm.fail(code) fails the request with an application error once the handler returns (the caller
// sees ERR_APP, HTTP ingress answers 500, an actor's writes are rolled back). A `throw`, an out-of-bounds access
// or running out of memory traps instead: the request fails and the instance is replaced.
//
// Actors (kind = "actor") also get mm.kv, mm.sql, mm.alarm (handled by onAlarm) and a storage schema version with
// its migration (onMigrate, and re-export mm_schema_version and mm_migrate); actors with `websocket = true` get
// mm.ws and the onWs* handlers. See README.md and docs/lang-assemblyscript.md.
//
// Build (see README.md): asc svc.ts -o svc.wasm -O3 --runtime incremental --use abort=
//
// Lifetimes. Request views, call replies, storage reads and alloc() memory are valid until the handler returns
// (the SDK reclaims them when the guest is next entered). Managed objects (strings, arrays, class instances) are
// the garbage collector's, as in any AssemblyScript program. Handlers are never re-entered.

import * as host from "./host";
import {
  arenaAvail, arenaReset, arenaSpace, Buf, Bytes, CALL_MIN_SPACE, lend, localError, newBuf, rawLen, rawOf, rawPtr,
  resetStatus, settle, settleStatus, status,
} from "./bytes";
import { decodeRequest, finishResponse, HttpRequest, HttpResponse, request, resetResponse, response } from "./http";
import * as kv from "./kv";
import * as sql from "./sql";
import * as alarm from "./alarm";
import * as ws from "./ws";

export { Buf, Bytes, HttpRequest, HttpResponse, kv, sql, alarm, ws };
export { HeaderIterator } from "./http";
export { alloc } from "./bytes";

// ---------------------------------------------------------------------------------------------------------------
// Constants from docs/abi.md
// ---------------------------------------------------------------------------------------------------------------

export const ABI_VERSION: i32 = 2;

/** Request kinds (the `kind` argument of mm_handle). */
export const KIND_HTTP: i32 = 1;
export const KIND_CALL: i32 = 2;
export const KIND_MESSAGE: i32 = 3;
export const KIND_ALARM: i32 = 4;
export const KIND_WS_OPEN: i32 = 5;
export const KIND_WS_MESSAGE: i32 = 6;
export const KIND_WS_CLOSE: i32 = 7;

/** The host's error codes (all negative): what lastCode() and the i32 results of the SDK's functions report. */
export const OK: i32 = 0;
export const ERR_UNKNOWN_TARGET: i32 = -1; // no service of that name is loaded
export const ERR_FORBIDDEN: i32 = -2; // the target is not in this service's `calls` allowlist
export const ERR_OVERLOADED: i32 = -3; // the callee has no free instance, or its mailbox is full
export const ERR_TRAP: i32 = -4; // the callee trapped or broke the ABI
export const ERR_TIMEOUT: i32 = -5; // the callee exceeded its deadline
export const ERR_DEPTH: i32 = -6; // the call chain is deeper than max_call_depth
export const ERR_APP: i32 = -7; // the callee returned an application error
export const ERR_TOO_LARGE: i32 = -8; // the request does not fit the callee
export const ERR_NO_REPLY: i32 = -9; // take_reply without a held reply (the SDK handles take_reply itself)
export const ERR_UNAVAILABLE: i32 = -10; // the callee is stopping
export const ERR_NOT_FOUND: i32 = -11; // kv.get, kv.getInt, alarm.get: nothing stored
export const ERR_STORAGE_FULL: i32 = -12; // the write would take the actor past its storage_limit
export const ERR_SQL: i32 = -13; // sql.exec: the statement failed or is not allowed (SQLite's message)
export const ERR_NOT_ACTOR: i32 = -14; // a storage, alarm or ws function in a service that is not an actor
export const ERR_INVALID: i32 = -15; // a key or value over its bound, bad list options or SQL parameters

/** Application error codes the SDK itself reports (a handler may fail with any code > 0). */
export const APP_BAD_REQUEST: i32 = 400; // the host sent a request that does not decode
export const APP_INTERNAL: i32 = 500; // the handler built an invalid reply (a header over 64 KiB)
export const APP_NOT_IMPLEMENTED: i32 = 501; // no handler for this kind of request

/** Log levels for log(). */
export const LOG_DEBUG: i32 = 0;
export const LOG_INFO: i32 = 1;
export const LOG_WARN: i32 = 2;
export const LOG_ERROR: i32 = 3;

// ---------------------------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------------------------

let httpHandler: ((req: HttpRequest, res: HttpResponse) => void) | null = null;
let callHandler: ((req: Bytes, reply: Buf) => void) | null = null;
let messageHandler: ((msg: Bytes) => void) | null = null;
let alarmHandler: ((scheduledMs: u64, attempt: u32) => void) | null = null;
let wsOpenHandler: ((conn: u64, path: Bytes, query: Bytes) => void) | null = null;
let wsMessageHandler: ((conn: u64, type: i32, data: Bytes) => void) | null = null;
let wsCloseHandler: ((conn: u64, code: i32, reason: Bytes) => void) | null = null;
let migrateHandler: ((from: i32) => void) | null = null;
let schemaVersion: i32 = 0;

/** Kind HTTP: fill in `res` (status 200, no headers and an empty body on entry). */
export function onHttp(handler: (req: HttpRequest, res: HttpResponse) => void): void {
  httpHandler = handler;
}

/** Kind CALL: append the reply to `reply` (empty on entry), or mm.fail(code). */
export function onCall(handler: (req: Bytes, reply: Buf) => void): void {
  callHandler = handler;
}

/** Kind MESSAGE: nothing goes back to the sender; mm.fail(code) makes the message count as failed. */
export function onMessage(handler: (msg: Bytes) => void): void {
  messageHandler = handler;
}

/** Kind ALARM (actors): the alarm set for `scheduledMs` is due; `attempt` is 1 the first time. mm.fail(code) rolls
 *  back and has it retried with backoff (up to 10 attempts). The alarm is cleared when the handler succeeds,
 *  unless it set a new one. */
export function onAlarm(handler: (scheduledMs: u64, attempt: u32) => void): void {
  alarmHandler = handler;
}

/** Kind WS_OPEN (actors with `websocket = true`): client `conn` connected on `path` (raw, starts with '/') with
 *  `query` (without '?' and without the `since` the daemon handles). mm.fail(code) refuses it (close 1008). */
export function onWsOpen(handler: (conn: u64, path: Bytes, query: Bytes) => void): void {
  wsOpenHandler = handler;
}

/** Kind WS_MESSAGE: client `conn` sent a message of `type` (ws.TEXT, checked UTF-8 by the daemon, or ws.BINARY). */
export function onWsMessage(handler: (conn: u64, type: i32, data: Bytes) => void): void {
  wsMessageHandler = handler;
}

/** Kind WS_CLOSE: connection `conn` is gone, closed with `code` (ws.CLOSE_LOST when lost) and `reason`. */
export function onWsClose(handler: (conn: u64, code: i32, reason: Bytes) => void): void {
  wsCloseHandler = handler;
}

/**
 * Declares the storage schema version this build expects (an i32 > 0) and the migration that brings an actor's
 * storage from an older one (`handler` may be null when there is nothing to convert). It runs before the first
 * request an actor handles with this build, when its stored version is lower, in that request's transaction;
 * mm.fail(code) (or a trap) fails the request and leaves the version as it was. The service must also re-export
 * `mm_schema_version` and `mm_migrate`.
 */
export function onMigrate(version: i32, handler: ((from: i32) => void) | null): void {
  schemaVersion = version;
  migrateHandler = handler;
}

// ---------------------------------------------------------------------------------------------------------------
// Failing, errors and logging
// ---------------------------------------------------------------------------------------------------------------

let pendingFail: i32 = 0;

/**
 * Fails the current request with application error `code` (> 0; 0 or less means APP_INTERNAL) once the handler
 * returns, whatever it did: the reply is discarded, a caller sees ERR_APP, HTTP ingress answers 500, a message
 * counts as failed, an alarm is retried, a WebSocket open is refused, and an actor's writes are rolled back.
 */
export function fail(code: i32): void {
  pendingFail = code > 0 ? code : APP_INTERNAL;
}

/**
 * The code of the last SDK function that returned null (or -1 from alarm.get, 0 from kv.getInt): ERR_NOT_FOUND
 * when there was nothing, another ERR_* when it failed; 0 after one that succeeded. Functions that return an i32
 * code set it too.
 */
export function lastCode(): i32 {
  return status;
}

/** The length of a W3C traceparent value, "00-<trace id>-<span id>-<flags>". */
export const TRACEPARENT_LEN: i32 = 55;

/** The current request's trace context (docs/tracing.md) as a W3C traceparent value: the trace id and the span
 *  the daemon opened for this request, call or message. null when the daemon's tracing is off (an incoming HTTP
 *  request's own `traceparent` header is still in its headers). Allocates a string. */
export function traceContext(): string | null {
  const dst = arenaSpace(<usize>TRACEPARENT_LEN);
  const n = host.trace_context(dst, TRACEPARENT_LEN);
  if (n != TRACEPARENT_LEN) return null;
  return String.UTF8.decodeUnsafe(dst, <usize>n);
}

/** The message of the last failure (the host's, or the SDK's own), "" if there was none. Allocates a string. */
export function lastError(): string {
  const local = localError;
  if (local != null) return local;
  // Try a small buffer first; the host returns the full length, so a second try always fits.
  let want: usize = 256;
  for (let attempt = 0; attempt < 2; attempt++) {
    const dst = arenaSpace(want);
    const n = host.last_error(dst, <i32>want);
    if (n <= 0) return "";
    if (<usize>n <= want) return String.UTF8.decodeUnsafe(dst, <usize>n);
    want = <usize>n;
  }
  return "";
}

/** A short name for an ERR_* code ("overloaded", "timeout", ...), for logs and error bodies. */
export function errorName(code: i32): string {
  switch (code) {
    case OK: return "ok";
    case ERR_UNKNOWN_TARGET: return "unknown target";
    case ERR_FORBIDDEN: return "forbidden";
    case ERR_OVERLOADED: return "overloaded";
    case ERR_TRAP: return "trap";
    case ERR_TIMEOUT: return "timeout";
    case ERR_DEPTH: return "call depth exceeded";
    case ERR_APP: return "application error";
    case ERR_TOO_LARGE: return "too large";
    case ERR_NO_REPLY: return "no reply";
    case ERR_UNAVAILABLE: return "unavailable";
    case ERR_NOT_FOUND: return "not found";
    case ERR_STORAGE_FULL: return "storage full";
    case ERR_SQL: return "sql error";
    case ERR_NOT_ACTOR: return "not an actor";
    case ERR_INVALID: return "invalid";
    default: return "unknown error";
  }
}

/** Writes one structured log line (event `guest.log`) at `level` (LOG_DEBUG ... LOG_ERROR); `msg` as for Buf.append. */
export function log<T>(level: i32, msg: T): void {
  rawOf<T>(msg);
  host.log(level, rawPtr, rawLen);
}

export function logDebug<T>(msg: T): void {
  log<T>(LOG_DEBUG, msg);
}
export function logInfo<T>(msg: T): void {
  log<T>(LOG_INFO, msg);
}
export function logWarn<T>(msg: T): void {
  log<T>(LOG_WARN, msg);
}
export function logError<T>(msg: T): void {
  log<T>(LOG_ERROR, msg);
}

// ---------------------------------------------------------------------------------------------------------------
// Calling other services
// ---------------------------------------------------------------------------------------------------------------

/**
 * Calls service `target` (in this service's `calls` allowlist; an actor as "<service>/<key>") with `req` (a
 * string, Bytes, ArrayBuffer, Uint8Array or StaticArray<u8>) and waits for the reply: a view valid until the
 * handler returns, of any size. null when the call failed: lastCode() is the ERR_* code, lastError() says why.
 */
export function call<T>(target: string, req: T): Bytes | null {
  rawOf<string>(target);
  const tp = rawPtr;
  const tl = rawLen;
  rawOf<T>(req);
  const rp = rawPtr;
  const rl = rawLen;
  const dst = lend(CALL_MIN_SPACE);
  const cap = arenaAvail;
  return settle(host.call(tp, tl, rp, rl, dst, <i32>cap), dst, cap);
}

/** Queues `msg` for `target` (allowlisted as for call), which handles it later as kind MESSAGE: 0, or an ERR_*
 *  code (ERR_OVERLOADED when its mailbox is full). Delivery failures after queueing are never reported back. */
export function send<T>(target: string, msg: T): i32 {
  rawOf<string>(target);
  const tp = rawPtr;
  const tl = rawLen;
  rawOf<T>(msg);
  return settleStatus(host.send(tp, tl, rawPtr, rawLen));
}

// ---------------------------------------------------------------------------------------------------------------
// Actors: the key and the clock (mm.kv, mm.sql, mm.alarm and mm.ws are in their own files)
// ---------------------------------------------------------------------------------------------------------------

let keyBytes: Bytes = changetype<Bytes>(0);

/** This actor's key (from its route `/counter/{key}` or a caller's target "counter/<key>"); null in a service that
 *  is not an actor. Read once and kept: it does not change during an instance's life. */
export function actorKey(): Bytes | null {
  if (changetype<usize>(keyBytes) != 0) return keyBytes;
  let cap: i32 = 512; // the longest key the ABI allows
  let p = heap.alloc(<usize>cap);
  let n = host.actor_key(p, cap);
  if (n > cap) {
    p = heap.realloc(p, <usize>n);
    cap = n;
    n = host.actor_key(p, cap);
  }
  if (n < 0) {
    heap.free(p);
    settleStatus(n);
    return null;
  }
  const b = changetype<Bytes>(heap.alloc(offsetof<Bytes>()));
  b.ptr = p;
  b.len = n;
  keyBytes = b;
  return b;
}

const clockOut = memory.data(8);

/** The wall clock in milliseconds since the Unix epoch (WASI's realtime clock), for alarm times. */
export function nowMs(): i64 {
  if (host.clock_time_get(0, 1000000, clockOut) != 0) return 0;
  return <i64>(load<u64>(clockOut) / 1000000);
}

// ---------------------------------------------------------------------------------------------------------------
// ABI exports
// ---------------------------------------------------------------------------------------------------------------

let inbox: usize = 0;
let inboxCap: usize = 0;
const callReply: Buf = newBuf();
const requestView: Bytes = changetype<Bytes>(heap.alloc(offsetof<Bytes>()));
const wsPath: Bytes = changetype<Bytes>(heap.alloc(offsetof<Bytes>()));
const wsQuery: Bytes = changetype<Bytes>(heap.alloc(offsetof<Bytes>()));

export function mm_abi_version(): i32 {
  return ABI_VERSION;
}

export function mm_inbox(size: i32): usize {
  const want = <usize>(<u32>size); // the host treats sizes as unsigned
  if (want <= inboxCap && inbox != 0) return inbox;
  // Allocate the new buffer before freeing the old one, so that the old one stays valid if this traps.
  const p = heap.alloc(want ? want : 1);
  if (inbox != 0) heap.free(inbox);
  inbox = p;
  inboxCap = want;
  return inbox;
}

/** (ptr << 32) | len of a reply. */
@inline function replyOf(ptr: usize, len: i32): i64 {
  return <i64>((<u64>ptr << 32) | <u64>(<u32>len));
}

@inline function appError(code: i32): i64 {
  return -<i64>(code < 0 ? -code : code);
}

/** What every entry starts with: a fresh arena and no status or failure left from the previous one. */
@inline function beginEntry(): void {
  arenaReset();
  resetStatus();
  pendingFail = 0;
}

/** The result of a handler that returned: `reply`, or the error mm.fail asked for. */
@inline function finishEntry(reply: i64): i64 {
  return pendingFail ? appError(pendingFail) : reply;
}

function badRequest(what: string): i64 {
  logError(what);
  return appError(APP_BAD_REQUEST);
}

export function mm_handle(kind: i32, len: i32): i64 {
  beginEntry();
  const n = <usize>(<u32>len);
  if (n > inboxCap) return appError(APP_BAD_REQUEST);
  const req = requestView;
  req.ptr = inbox;
  req.len = len;
  if (kind == KIND_CALL) {
    const h = callHandler;
    if (!h) return appError(APP_NOT_IMPLEMENTED);
    const reply = callReply;
    reply.len = 0;
    h(req, reply);
    return finishEntry(replyOf(reply.ptr, reply.len));
  }
  if (kind == KIND_HTTP) {
    const h = httpHandler;
    if (!h) return appError(APP_NOT_IMPLEMENTED);
    if (!decodeRequest(inbox, len)) return badRequest("micromono: the HTTP request from the host does not decode");
    resetResponse();
    h(request, response);
    if (pendingFail) return appError(pendingFail);
    const out = finishResponse();
    if (out == null) {
      logError("micromono: the HTTP response has a header name or value over 65535 bytes");
      return appError(APP_INTERNAL);
    }
    return replyOf(out.ptr, out.len);
  }
  if (kind == KIND_MESSAGE) {
    const h = messageHandler;
    if (!h) return appError(APP_NOT_IMPLEMENTED);
    h(req);
    return finishEntry(0);
  }
  if (kind == KIND_ALARM) {
    const h = alarmHandler;
    if (!h) return appError(APP_NOT_IMPLEMENTED);
    if (len < 12) return badRequest("micromono: the alarm request from the host does not decode");
    h(load<u64>(inbox), load<u32>(inbox, 8));
    return finishEntry(0);
  }
  if (kind >= KIND_WS_OPEN && kind <= KIND_WS_CLOSE) return wsHandle(kind, len);
  return appError(APP_NOT_IMPLEMENTED); // a kind from a newer ABI: docs/abi.md lets the guest reject it
}

/**
 * The WebSocket kinds. Each request starts with `u64 conn` and a u32: the open's path length (then `u32
 * query_len`, the path, the query), the message's type, or the close's code (then the message or the reason).
 * Without a handler a connection is accepted and its messages and close are ignored, undecoded.
 */
function wsHandle(kind: i32, len: i32): i64 {
  const openH = wsOpenHandler;
  const messageH = wsMessageHandler;
  const closeH = wsCloseHandler;
  if (kind == KIND_WS_OPEN ? !openH : kind == KIND_WS_MESSAGE ? !messageH : !closeH) return 0;
  const bad = "micromono: the WebSocket request from the host does not decode";
  if (len < 12) return badRequest(bad);
  const conn = load<u64>(inbox);
  const word = load<u32>(inbox, 8);
  const rest = inbox + 12;
  const restLen = <u32>len - 12;
  if (kind == KIND_WS_OPEN) {
    if (restLen < 4) return badRequest(bad);
    const queryLen = load<u32>(rest);
    if (<u64>word + <u64>queryLen > <u64>(restLen - 4)) return badRequest(bad);
    wsPath.ptr = rest + 4;
    wsPath.len = <i32>word;
    wsQuery.ptr = rest + 4 + word;
    wsQuery.len = <i32>queryLen;
    openH!(conn, wsPath, wsQuery);
    return finishEntry(0);
  }
  const data = requestView;
  data.ptr = rest;
  data.len = <i32>restLen;
  if (kind == KIND_WS_MESSAGE) {
    messageH!(conn, <i32>word, data);
  } else {
    if (word > 0xffff) return badRequest(bad); // close codes are 16 bits (RFC 6455)
    closeH!(conn, <i32>word, data);
  }
  return finishEntry(0);
}

export function mm_schema_version(): i32 {
  return schemaVersion;
}

export function mm_migrate(from: i32): i32 {
  beginEntry();
  const h = migrateHandler;
  if (h) h(from);
  return pendingFail;
}
