// ws.ts: an actor's WebSocket connections (docs/abi.md "WebSockets", docs/stream.md), imported by a service as
// `mm.ws`, for an actor service with `websocket = true`.
//
// The daemon holds the connections; the actor sees each one as a u64 id in its onWsOpen, onWsMessage and onWsClose
// handlers, and answers with these functions, from any handler and for any of its connections. What they send
// leaves through the output gate: once the current request's writes are durable, and not at all if the request
// fails (a trap, mm.fail, a refused open). So 0 means "queued with this request", not "delivered". The data is
// copied during the call: a string (sent as UTF-8), Bytes, ArrayBuffer, Uint8Array or StaticArray<u8> will do.
//
// Each returns 0 or a negative code: ERR_NOT_FOUND (no such connection of this actor: it closed meanwhile, which
// is normal), ERR_INVALID (bad arguments, see each function) or ERR_NOT_ACTOR; lastError() says why.

import * as host from "./host";
import { rawLen, rawOf, rawPtr, settleStatus } from "./bytes";

/** Message types: the `type` of onWsMessage, send and publish. */
export const TEXT: i32 = 1;
export const BINARY: i32 = 2;
/** Close codes: close() takes CLOSE_NORMAL or an application code from 3000 to 4999; onWsClose also reports the
 *  daemon's (docs/stream.md "Close codes"), CLOSE_LOST when the connection was lost without a close frame. */
export const CLOSE_NORMAL: i32 = 1000;
export const CLOSE_LOST: i32 = 1006;

/**
 * Sends `data` as one message of `type` (TEXT or BINARY) to connection `conn` only, unnumbered and not kept for
 * resuming: a text message reaches the client wrapped as {"data": "<the text>"}, a binary one after 8 zero bytes
 * (the sdk/ clients unwrap both). ERR_INVALID for another type, or text that is not UTF-8.
 */
export function send<T>(conn: u64, type: i32, data: T): i32 {
  rawOf<T>(data);
  return settleStatus(host.ws_send(<i64>conn, type, rawPtr, rawLen));
}

/**
 * Publishes `data` as one message of `type` to every connection of this actor or, when `tag` is not empty, to
 * those tagged with it (tag()). The daemon numbers it in the actor's stream and keeps it for clients that resume:
 * a text message reaches clients as {"seq": N, "data": "<the text>"}, so publish the payload itself, not a JSON
 * envelope. ERR_INVALID for another type, text that is not UTF-8, or a tag over 64 bytes.
 */
export function publish<T>(type: i32, data: T, tag: string = ""): i32 {
  rawOf<T>(data);
  const dp = rawPtr;
  const dl = rawLen;
  rawOf<string>(tag);
  return settleStatus(host.ws_publish(type, dp, dl, rawPtr, rawLen));
}

/** Closes connection `conn` with `code` (CLOSE_NORMAL, or 3000 to 4999) and `reason` (at most 123 bytes of UTF-8).
 *  onWsClose follows for it later, as for any close. */
export function close(conn: u64, code: i32, reason: string = ""): i32 {
  rawOf<string>(reason);
  return settleStatus(host.ws_close(<i64>conn, code, rawPtr, rawLen));
}

/** Adds `tag` (1 to 64 bytes) to connection `conn`, for publish. Tags last as long as the connection. */
export function tag(conn: u64, name: string): i32 {
  rawOf<string>(name);
  return settleStatus(host.ws_tag(<i64>conn, rawPtr, rawLen));
}
