/**
 * micromono-stream.js: the JavaScript client of micromono's resumable WebSocket stream (docs/stream.md).
 *
 * An ES module with no dependencies and no build step, for browsers (and Node >= 22, or any runtime with a
 * WHATWG WebSocket; pass one as `options.WebSocket` elsewhere). It connects to an actor's route, sorts the frames
 * the daemon sends into numbered messages, resets and direct messages, remembers the last sequence number seen, and
 * when the connection is lost it reconnects with `?since=<last seq>` so that the page misses nothing the actor
 * published meanwhile (or is told, with a reset, that it did).
 *
 *     import { connect } from "/static/micromono-stream.js";
 *
 *     const stream = connect("/chat/lobby", {
 *       since: 0,                                   // optional: resume after this seq (0: all the daemon keeps)
 *       onMessage(data, seq) { ... },               // a published message: string (text) or Uint8Array (binary)
 *       onDirect(data) { ... },                     // an unnumbered message to this connection only (ws_send)
 *       onReset(seq) { ... },                       // messages were lost: reload what you need; goes on after seq
 *       onProtocolError(error) { ... },             // a frame that is not docs/stream.md's, skipped (default: warn)
 *       onStatus(state, info) { ... },              // "connecting" | "open" | "reconnecting" | "closed"
 *       backoff: { initial: 250, max: 10000 },      // milliseconds, see below (also factor, resetAfter, maxAttempts)
 *       connectTimeout: 10000,                      // ms a handshake may take before it counts as failed
 *       WebSocket,                                  // the constructor to use (default: globalThis.WebSocket)
 *     });
 *     stream.send("alice: hello");                  // true when handed to an open connection (never queued)
 *     stream.close();                               // for good: no reconnecting after this
 *     stream.reconnect();                           // now, resuming (also after a final close)
 *     stream.state; stream.lastSeq; stream.url;     // read-only
 *
 * onStatus's `info`: "connecting" {url, attempt}; "open" {url}; "reconnecting" {code, reason, attempt, delay};
 * "closed" {code, reason, byClient?, gaveUp?}. A handshake the server refused (any HTTP status) or a connection
 * lost without a close frame reports code 1006: browsers do not show the HTTP status to the page.
 *
 * Ordering and duplicates. onMessage sees messages in sequence order, each at most once: a numbered message whose
 * seq is not above the last one seen is dropped. Sequence numbers may skip (a message published to a tag this
 * connection lacks); that is not a loss. A loss is reported with onReset(seq): the daemon no longer holds the
 * messages after the client's last seq (or restarted); the stream goes on after `seq`, which may be lower than the
 * last seq seen (a restarted daemon numbers from 1 again).
 *
 * Resuming. The first connection asks for `since` when it is given (otherwise live messages only). Every
 * reconnection asks for the last seq seen or reset to; if there was none yet, for the first connection's `since`,
 * else 0, which replays whatever the daemon still holds: a page that had seen nothing yet misses nothing either.
 *
 * Reconnecting. After a close that retrying may cure (1001 stopping, 1006 lost, 1011 internal error, 4000 idle,
 * 4008 too slow, 4029 too many connections, a failed or timed-out handshake, anything unknown) the client waits a
 * random delay in [0, min(max, initial * factor^n)) ("full jitter", n = failed attempts in a row) and connects
 * again. The count starts over once a connection has stayed open `resetAfter` ms (not for 4029). After
 * `maxAttempts` failures in a row it gives up (state "closed"). It does not reconnect after 1000 (a normal close by
 * the actor) or after a close that retrying as is would only repeat (1002, 1003, 1007 invalid UTF-8, 1008 refused,
 * 1009 message too big, 1010): state "closed" with the code, and `reconnect()` tries again when the page decides to.
 * In a browser, the window's "offline" event drops the connection at once (a dead socket can take minutes to
 * notice) and its "online" event reconnects without waiting for the backoff.
 *
 * Frames (docs/stream.md, "What the server sends"): every frame says what it is. A text frame is a JSON object of
 * exactly one of three shapes: {"seq": <int>, "data": <string>} a numbered message, {"reset": true, "seq": <int>} a
 * reset, {"data": <string>} (no seq) a direct message, handed over as its `data`. A binary frame starts with its seq,
 * 8 bytes little-endian: 0 makes it direct (no published message has 0), any other a numbered message; the bytes
 * after the seq are the message. Any other frame (not JSON, another object, a binary frame under 8 bytes, a seq over
 * 2^53) is a protocol error: it is skipped, lastSeq does not move, the connection stays open, and it is reported
 * to onProtocolError(error) (`error.frame` holds it), or with console.warn when there is no such callback.
 */

/** Close codes after which reconnecting as is would fail again, or that ask for no reconnection (1000). */
const FINAL_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010]);

/** The close code 4029 (too many connections): never counts as a healthy connection for the backoff. */
const TOO_MANY = 4029;

/** Defaults for `options.backoff`, in milliseconds (maxAttempts: failed attempts in a row before giving up). */
export const DEFAULT_BACKOFF = Object.freeze({
  initial: 250,
  max: 10000,
  factor: 2,
  resetAfter: 5000,
  maxAttempts: Infinity,
});

/** Milliseconds a handshake may take before the attempt counts as failed. */
export const DEFAULT_CONNECT_TIMEOUT = 10000;

/**
 * Whether a connection closed with `code` should be reconnected (docs/stream.md, "Close codes").
 * @param {number} code
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  return !FINAL_CODES.has(code);
}

/**
 * What a frame is: `{kind: "message", seq, data}`, `{kind: "reset", seq}`, `{kind: "direct", data}`, or
 * `{kind: "invalid", data, reason}` for a frame that is none of docs/stream.md's (`data`: the frame as received).
 * Binary data is a Uint8Array without the frame's 8-byte seq. Exported for tests and tools.
 * @param {string | ArrayBuffer | Uint8Array} frame
 */
export function parseFrame(frame) {
  if (typeof frame === "string") {
    const value = jsonObject(frame);
    if (value === null) return invalid(frame, "a text frame that is not a JSON object");
    const keys = Object.keys(value).length;
    if (keys === 2 && isSeq(value.seq)) {
      if (typeof value.data === "string") return { kind: "message", seq: value.seq, data: value.data };
      if (value.reset === true) return { kind: "reset", seq: value.seq };
    } else if (keys === 1 && typeof value.data === "string") {
      return { kind: "direct", data: value.data };
    }
    return invalid(frame, "a JSON object of none of the three shapes");
  }
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  if (bytes.length < 8) return invalid(bytes, `a binary frame of ${bytes.length} bytes, shorter than its seq`);
  const seq = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (seq === 0n) return { kind: "direct", data: bytes.subarray(8) };
  if (seq > BigInt(Number.MAX_SAFE_INTEGER)) return invalid(bytes, `a binary frame whose seq ${seq} is over 2^53`);
  return { kind: "message", seq: Number(seq), data: bytes.subarray(8) };
}

/**
 * Open a resumable stream (see the top of this file).
 * @param {string | URL} url  ws:, wss:, http:, https: (mapped to ws: / wss:), or relative to the page
 * @param {object} [options]
 * @returns {Stream}
 */
export function connect(url, options = {}) {
  return new Stream(url, options);
}

/** A resumable connection to one actor. Use `connect()`; read `state`, `lastSeq` and `url`. */
export class Stream {
  #base;
  #options;
  #backoff;
  #WebSocket;
  #socket = null;
  #state = "connecting";
  #lastSeq;
  #firstSince;
  #connectedOnce = false;
  #failures = 0;
  #openedAt = null;
  #retryTimer = null;
  #connectTimer = null;
  #stopped = false;
  #url = "";
  #onOffline = () => this.#drop(1006, "offline");
  #onOnline = () => {
    // Now, not after the backoff (and not after an attempt made while offline, which may be hanging).
    if (this.#stopped || this.#state === "open") return;
    const socket = this.#detach();
    if (socket !== null) socket.close(1000, "online");
    this.#open();
  };

  constructor(url, options = {}) {
    this.#options = options;
    this.#backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket: pass options.WebSocket");
    this.#base = wsUrl(url);
    const inUrl = this.#base.searchParams.get("since");
    this.#firstSince = options.since ?? (inUrl !== null && /^\d+$/.test(inUrl) ? Number(inUrl) : undefined);
    if (this.#firstSince !== undefined && !isSeq(this.#firstSince)) {
      throw new RangeError(`since must be an integer >= 0, got ${this.#firstSince}`);
    }
    this.#lastSeq = this.#firstSince;
    this.#watchNetwork(true);
    // After `connect()` has returned, so that the callbacks may already use what it returned.
    queueMicrotask(() => {
      if (!this.#stopped && this.#socket === null && this.#retryTimer === null) this.#open();
    });
  }

  /** "connecting", "open", "reconnecting" or "closed". */
  get state() {
    return this.#state;
  }

  /** The last sequence number seen or reset to (undefined before the first). */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** The URL of the current (or last) connection attempt, with its `since`. */
  get url() {
    return this.#url;
  }

  /**
   * Send a text (string) or binary (ArrayBuffer, a typed array, Blob) message to the actor.
   * @returns {boolean} true when handed to an open connection; false otherwise (nothing is queued: the page decides)
   */
  send(data) {
    const socket = this.#socket;
    if (socket === null || socket.readyState !== 1 /* OPEN */) return false;
    socket.send(data);
    return true;
  }

  /** Close for good (code 1000, or 3000-4999): no reconnecting; state "closed". Idempotent. */
  close(code = 1000, reason = "") {
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new RangeError(`a client closes with 1000 or 3000-4999, got ${code}`);
    }
    if (this.#stopped) return;
    const socket = this.#detach();
    if (socket !== null) socket.close(code, reason);
    this.#finish({ code, reason, byClient: true });
  }

  /** Drop the current connection (if any) and connect again now, resuming; also after a final close. */
  reconnect() {
    if (this.#stopped) {
      this.#stopped = false;
      this.#watchNetwork(true);
    }
    const socket = this.#detach();
    if (socket !== null) socket.close(1000, "reconnecting");
    this.#failures = 0;
    this.#open();
  }

  // --- connecting --------------------------------------------------------------------------------------------

  #open() {
    this.#clearTimers();
    const since = this.#connectedOnce ? (this.#lastSeq ?? 0) : this.#firstSince;
    const url = new URL(this.#base);
    if (since === undefined) url.searchParams.delete("since");
    else url.searchParams.set("since", String(since));
    this.#url = url.href;
    this.#connectedOnce = true;
    this.#openedAt = null;
    this.#setState("connecting", { url: this.#url, attempt: this.#failures });
    let socket;
    try {
      socket = new this.#WebSocket(this.#url);
    } catch (error) {
      // A URL the WebSocket constructor refuses: retrying cannot help.
      this.#finish({ code: 0, reason: String(error) });
      return;
    }
    socket.binaryType = "arraybuffer";
    this.#socket = socket;
    const timeout = this.#options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT;
    this.#connectTimer = setTimeout(() => this.#drop(1006, "connect timeout"), timeout);
    socket.onopen = () => {
      if (this.#socket !== socket) return;
      clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
      this.#openedAt = Date.now();
      this.#setState("open", { url: this.#url });
    };
    socket.onmessage = (event) => {
      if (this.#socket === socket) this.#frame(event.data);
    };
    socket.onerror = () => {}; // a close event follows, with the code
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#closed(event.code, event.reason);
    };
  }

  /** Give up on the current connection without waiting for its close handshake, and go on as if it closed. */
  #drop(code, reason) {
    const socket = this.#detach();
    if (socket === null) return;
    socket.close(1000, reason);
    this.#closed(code, reason);
  }

  /** Forget the current socket (its events are ignored from now on) and return it. */
  #detach() {
    this.#clearTimers();
    const socket = this.#socket;
    this.#socket = null;
    return socket;
  }

  #closed(code, reason) {
    this.#clearTimers();
    const lived = this.#openedAt === null ? 0 : Date.now() - this.#openedAt;
    this.#openedAt = null;
    if (!shouldReconnect(code)) {
      this.#finish({ code, reason });
      return;
    }
    if (lived >= this.#backoff.resetAfter && code !== TOO_MANY) this.#failures = 0;
    if (this.#failures >= this.#backoff.maxAttempts) {
      this.#finish({ code, reason, gaveUp: true });
      return;
    }
    const { initial, max, factor } = this.#backoff;
    const ceiling = Math.min(max, initial * factor ** this.#failures);
    const delay = Math.floor(Math.random() * ceiling);
    this.#failures += 1;
    this.#setState("reconnecting", { code, reason, attempt: this.#failures, delay });
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #finish(info) {
    this.#clearTimers();
    this.#stopped = true;
    this.#watchNetwork(false);
    this.#setState("closed", info);
  }

  /** Follow the window's "offline" and "online" events (where there is a window), or stop following them. */
  #watchNetwork(on) {
    if (typeof globalThis.addEventListener !== "function") return;
    const method = on ? "addEventListener" : "removeEventListener";
    globalThis[method]("offline", this.#onOffline);
    globalThis[method]("online", this.#onOnline);
  }

  #clearTimers() {
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#connectTimer);
    this.#retryTimer = this.#connectTimer = null;
  }

  // --- frames ------------------------------------------------------------------------------------------------

  #frame(data) {
    const frame = parseFrame(data);
    if (frame.kind === "message") {
      if (this.#lastSeq !== undefined && frame.seq <= this.#lastSeq) return; // seen already
      this.#lastSeq = frame.seq;
      this.#call("onMessage", frame.data, frame.seq);
    } else if (frame.kind === "reset") {
      this.#lastSeq = frame.seq;
      this.#call("onReset", frame.seq);
    } else if (frame.kind === "direct") {
      this.#call("onDirect", frame.data);
    } else {
      // Skipped, never guessed at: a frame the client cannot read must neither move lastSeq nor end the stream.
      const error = new Error(`micromono-stream: skipped a frame that is not docs/stream.md's: ${frame.reason}`);
      error.frame = frame.data;
      if (typeof this.#options.onProtocolError === "function") this.#call("onProtocolError", error);
      else console.warn(error.message, frame.data);
    }
  }

  #setState(state, info) {
    this.#state = state;
    this.#call("onStatus", state, info);
  }

  /** Run a page callback; its exception is reported, not thrown into the client's own bookkeeping. */
  #call(name, ...args) {
    const callback = this.#options[name];
    if (typeof callback !== "function") return;
    try {
      callback(...args);
    } catch (error) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(error);
      else
        setTimeout(() => {
          throw error;
        });
    }
  }
}

function invalid(data, reason) {
  return { kind: "invalid", data, reason };
}

function isSeq(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

/** The object a text frame holds, or null (not JSON, or not an object). */
function jsonObject(text) {
  if (!/^\s*\{/.test(text)) return null; // every frame of the stream is an object: skip parsing anything else
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

/** `url` as an absolute ws: or wss: URL (http: and https: are mapped; relative URLs resolve against the page). */
function wsUrl(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new SyntaxError(`a stream URL is ws:, wss:, http: or https:, got ${resolved.protocol}`);
  }
  resolved.hash = "";
  return resolved;
}
