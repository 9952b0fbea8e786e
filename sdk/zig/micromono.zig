//! micromono.zig: the Zig SDK for micromono services (guest ABI version 2, docs/abi.md). Built and tested with
//! Zig 0.17.1 (PyPI `ziglang==0.17.1`); Zig's std changes between releases, so pin that version.
//!
//! This file owns the guest side of the ABI for Zig: the `mm_abi_version`, `mm_inbox` and `mm_handle` exports,
//! the `micromono.*` host imports, request decoding, reply encoding and the per-request arena. A service is a
//! Zig file with handler functions and one line that exports them:
//!
//!     const mm = @import("micromono");
//!     comptime { mm.service(@This()); }
//!
//!     pub fn handleCall(req: []const u8, reply: *mm.Buf) !void {           // kind CALL    (micromono.call)
//!         if (req.len == 0) return mm.fail(400);                           // application error 400
//!         try reply.append(req);
//!     }
//!     pub fn handleHttp(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {   // kind HTTP (routes)
//!         res.status = 200;
//!         try res.header("content-type", "text/plain");
//!         try res.body.print("hello {s}", .{req.path});
//!     }
//!     pub fn handleMessage(msg: []const u8) !void { _ = msg; }             // kind MESSAGE (micromono.send)
//!
//! Every handler is optional; a request of a kind without one fails with application error 501 (except the
//! WebSocket kinds: without a handler a connection is accepted and its messages and close are ignored). A handler's
//! error becomes an application error: `mm.fail(code)` gives that code, `error.OutOfMemory` gives 507, and any
//! other error gives 500 and a `guest.log` line naming the error (with `lastError()` for the host's errors).
//!
//! Actors (a service declared `kind = "actor"`, docs/abi.md "Actors") also get durable per-key storage: `kv`
//! (key-value), `sql` (an SQLite database of their own), `alarm` (one wake-up time, handled by `handleAlarm`) and
//! a storage schema version with its migration:
//!
//!     pub const schema_version = 1;                                        // exports mm_schema_version, mm_migrate
//!     pub fn handleMigrate(from: i32) !void {                              // 0 -> 1: create the table
//!         if (from < 1) _ = try mm.sql.exec("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", &.{});
//!     }
//!     pub fn handleCall(req: []const u8, reply: *mm.Buf) !void {
//!         const n = (try mm.kv.getInt("n") orelse 0) + 1;                  // null: never stored
//!         try mm.kv.putInt("n", n);
//!         try reply.print("{d}", .{n});
//!     }
//!     pub fn handleAlarm(scheduled_ms: u64, attempt: u32) !void { ... }   // kind ALARM
//!
//! Every write of one request (and of `handleMigrate` before it) commits when the handler returns and is rolled
//! back if it fails (an error, or a trap). Memory is only a cache: an idle actor is closed and later revived from
//! its storage.
//!
//! An actor service with `websocket = true` also has WebSocket clients (docs/abi.md "WebSockets",
//! docs/stream.md): the daemon holds the connections and hands the actor their opens, messages and closes, in its
//! one-at-a-time order; the actor answers with `ws.send` (one connection) and `ws.publish` (all of them, numbered
//! and resumable):
//!
//!     pub fn handleWsOpen(conn: u64, path: []const u8, query: []const u8) !void {   // an error refuses
//!         try mm.ws.send(conn, .text, "welcome");
//!     }
//!     pub fn handleWsMessage(conn: u64, kind: mm.ws.Type, data: []const u8) !void {
//!         if (kind == .text) try mm.ws.publish(.text, data, .{});
//!     }
//!     pub fn handleWsClose(conn: u64, code: u16, reason: []const u8) !void { ... }
//!
//! Build (wasm32-freestanding needs no WASI; the exports must be named because Zig only exports what the
//! linker is told to):
//!
//!     python -m ziglang build-exe -target wasm32-freestanding -fno-entry -O ReleaseSmall --stack 65536 \
//!         --export=mm_abi_version --export=mm_inbox --export=mm_handle \
//!         --dep micromono -Mroot=svc.zig -Mmicromono=sdk/zig/micromono.zig -femit-bin=svc.wasm
//!
//! An actor with `schema_version` adds `--export=mm_schema_version --export=mm_migrate`. `nowMs()` imports WASI's
//! `clock_time_get` by hand (the daemon links WASI for every module), so the target can stay freestanding.
//!
//! `--stack` matters: Zig's default stack is 1 MiB for wasm, which would count against `memory_limit`.
//!
//! Lifetimes. Request slices, call replies, `lastError()` text and `arena()` memory are valid until the handler
//! returns (the next entry resets the arena). Keep longer-lived data in globals allocated with `allocator`:
//! the instance lives across requests, and a stateful service runs with `instances = 1`. Handlers are never
//! re-entered (docs/abi.md, "Resources and limits").

const std = @import("std");
const Allocator = std.mem.Allocator;

// ---------------------------------------------------------------------------------------------------------------
// Constants from docs/abi.md
// ---------------------------------------------------------------------------------------------------------------

pub const abi_version: i32 = 2;

/// The `kind` argument of `mm_handle`.
pub const Kind = enum(i32) { http = 1, call = 2, message = 3, alarm = 4, ws_open = 5, ws_message = 6, ws_close = 7, _ };

/// Why a `call` or `send` failed: the host's MM_ERR_* codes, plus `OutOfMemory` when this guest could not hold
/// the reply. `lastError()` gives the host's message.
pub const CallError = error{
    UnknownTarget, // -1  no service of that name is loaded
    Forbidden, //     -2  the target is not in this service's `calls` allowlist
    Overloaded, //    -3  no free instance, or the mailbox is full
    Trap, //          -4  the callee trapped or broke the ABI
    Timeout, //       -5  the callee exceeded its deadline
    Depth, //         -6  the call chain is deeper than max_call_depth
    App, //           -7  the callee returned an application error
    TooLarge, //      -8  the request does not fit the callee
    NoReply, //       -9  take_reply without a held reply (the SDK handles take_reply itself)
    Unavailable, //  -10  the callee is stopping
    Unexpected, //        a code this SDK does not know (a newer host)
    OutOfMemory,
};

/// Why a storage, SQL or alarm function failed (actors, docs/abi.md "Actors"): the host's MM_ERR_* codes, plus
/// `OutOfMemory` when this guest could not hold the result. `lastError()` gives the message.
pub const StorageError = error{
    StorageFull, //  -12  the write would take the actor past its storage_limit; nothing was written
    Sql, //          -13  the statement failed or is not allowed (`lastError()` has SQLite's message)
    NotActor, //     -14  this service is not `kind = "actor"`
    Invalid, //      -15  a key or value over its bound, bad list options or SQL parameters
    NoReply, //       -9  take_reply without a held result (the SDK handles take_reply itself)
    Unexpected, //        a code this SDK does not expect here (a newer host)
    OutOfMemory,
};

/// The ABI's numeric code for a `CallError`, `StorageError` or `ws.Error` (0 for `OutOfMemory`, which is this
/// guest's own failure, and for any other error).
pub fn errorCode(err: anyerror) i32 {
    return switch (err) {
        error.UnknownTarget => -1,
        error.Forbidden => -2,
        error.Overloaded => -3,
        error.Trap => -4,
        error.Timeout => -5,
        error.Depth => -6,
        error.App => -7,
        error.TooLarge => -8,
        error.NoReply => -9,
        error.Unavailable => -10,
        error.NotFound => -11,
        error.StorageFull => -12,
        error.Sql => -13,
        error.NotActor => -14,
        error.Invalid => -15,
        else => 0,
    };
}

fn errorFromCode(code: i32) CallError {
    return switch (code) {
        -1 => error.UnknownTarget,
        -2 => error.Forbidden,
        -3 => error.Overloaded,
        -4 => error.Trap,
        -5 => error.Timeout,
        -6 => error.Depth,
        -7 => error.App,
        -8 => error.TooLarge,
        -9 => error.NoReply,
        -10 => error.Unavailable,
        else => error.Unexpected,
    };
}

fn storageErrorFromCode(code: i32) StorageError {
    return switch (code) {
        -9 => error.NoReply,
        -12 => error.StorageFull,
        -13 => error.Sql,
        -14 => error.NotActor,
        -15 => error.Invalid,
        else => error.Unexpected,
    };
}

/// Application error codes the SDK itself reports (a handler may use any code via `fail`). They follow HTTP so
/// that they read naturally in the host's messages.
pub const app_bad_request: u31 = 400; // the host sent an HTTP request that does not decode
pub const app_internal: u31 = 500; // the handler returned an error other than `error.Fail`/`OutOfMemory`
pub const app_not_implemented: u31 = 501; // no handler for this kind of request
pub const app_no_memory: u31 = 507; // the handler (or the SDK) ran out of memory

// ---------------------------------------------------------------------------------------------------------------
// Host imports (module `micromono`)
// ---------------------------------------------------------------------------------------------------------------

const host = struct {
    extern "micromono" fn call(
        target: [*]const u8,
        target_len: i32,
        req: [*]const u8,
        req_len: i32,
        reply: [*]u8,
        reply_cap: i32,
    ) i32;
    extern "micromono" fn take_reply(ptr: [*]u8, cap: i32) i32;
    extern "micromono" fn send(target: [*]const u8, target_len: i32, msg: [*]const u8, msg_len: i32) i32;
    extern "micromono" fn log(level: i32, msg: [*]const u8, msg_len: i32) void;
    extern "micromono" fn last_error(ptr: [*]u8, cap: i32) i32;
    // Optional (docs/abi.md): imported only by a module that calls traceContext().
    extern "micromono" fn trace_context(ptr: [*]u8, cap: i32) i32;

    // Actors (docs/abi.md "Actors").
    extern "micromono" fn actor_key(ptr: [*]u8, cap: i32) i32;
    extern "micromono" fn kv_get(key: [*]const u8, key_len: i32, buf: [*]u8, buf_cap: i32) i32;
    extern "micromono" fn kv_put(key: [*]const u8, key_len: i32, val: [*]const u8, val_len: i32) i32;
    extern "micromono" fn kv_delete(key: [*]const u8, key_len: i32) i32;
    extern "micromono" fn kv_list(opts: [*]const u8, opts_len: i32, buf: [*]u8, buf_cap: i32) i32;
    extern "micromono" fn sql_exec(
        sql: [*]const u8,
        sql_len: i32,
        params: [*]const u8,
        params_len: i32,
        buf: [*]u8,
        buf_cap: i32,
    ) i32;
    extern "micromono" fn alarm_set(at_ms: i64) i32;
    extern "micromono" fn alarm_get() i64;
    extern "micromono" fn alarm_delete() i32;

    // WebSockets (docs/abi.md "WebSockets"). Connection ids are u64; the ABI passes them as i64.
    extern "micromono" fn ws_send(conn: i64, kind: i32, ptr: [*]const u8, len: i32) i32;
    extern "micromono" fn ws_publish(kind: i32, ptr: [*]const u8, len: i32, tag: [*]const u8, tag_len: i32) i32;
    extern "micromono" fn ws_close(conn: i64, code: i32, reason: [*]const u8, reason_len: i32) i32;
    extern "micromono" fn ws_tag(conn: i64, tag: [*]const u8, tag_len: i32) i32;

    // WASI, declared here rather than taken from std.os.wasi so that the target can stay freestanding.
    extern "wasi_snapshot_preview1" fn clock_time_get(clock_id: u32, precision: u64, time: *u64) u16;
};

// ---------------------------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------------------------

/// Long-lived allocations (service state). Zig's small, growing WebAssembly allocator.
pub const allocator: Allocator = std.heap.wasm_allocator;

var arena_state: std.heap.ArenaAllocator = .init(std.heap.wasm_allocator);

/// Per-request scratch memory, released when the guest is next entered. Never free it by hand.
pub fn arena() Allocator {
    return arena_state.allocator();
}

/// A growable byte buffer that remembers its allocator. Call replies and HTTP bodies are `Buf`s owned by the
/// SDK; services may make their own (`var b: mm.Buf = .{};`, then `b.deinit()`).
pub const Buf = struct {
    list: std.ArrayList(u8) = .empty,
    gpa: Allocator = allocator,

    /// The contents (valid until the buffer is next modified).
    pub fn items(self: *const Buf) []const u8 {
        return self.list.items;
    }

    pub fn append(self: *Buf, bytes: []const u8) Allocator.Error!void {
        return self.list.appendSlice(self.gpa, bytes);
    }

    pub fn appendByte(self: *Buf, byte: u8) Allocator.Error!void {
        return self.list.append(self.gpa, byte);
    }

    /// `std.fmt` formatting into the buffer.
    pub fn print(self: *Buf, comptime fmt: []const u8, args: anytype) Allocator.Error!void {
        return self.list.print(self.gpa, fmt, args);
    }

    /// Appends `bytes` as a JSON string literal: quoted, with '"', '\\' and control characters escaped. Bytes
    /// >= 0x80 are copied as they are, so pass UTF-8 to get valid JSON.
    pub fn appendJsonString(self: *Buf, bytes: []const u8) Allocator.Error!void {
        const hex = "0123456789abcdef";
        try self.appendByte('"');
        var run: usize = 0; // start of the current run of bytes that need no escaping
        for (bytes, 0..) |c, i| {
            if (c >= 0x20 and c != '"' and c != '\\') continue;
            try self.append(bytes[run..i]);
            run = i + 1;
            switch (c) {
                '"' => try self.append("\\\""),
                '\\' => try self.append("\\\\"),
                '\n' => try self.append("\\n"),
                '\r' => try self.append("\\r"),
                '\t' => try self.append("\\t"),
                else => try self.append(&.{ '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] }),
            }
        }
        try self.append(bytes[run..]);
        try self.appendByte('"');
    }

    /// Empties the buffer and keeps its memory.
    pub fn clear(self: *Buf) void {
        self.list.clearRetainingCapacity();
    }

    pub fn deinit(self: *Buf) void {
        self.list.deinit(self.gpa);
        self.* = .{ .gpa = self.gpa };
    }
};

// ---------------------------------------------------------------------------------------------------------------
// Application errors
// ---------------------------------------------------------------------------------------------------------------

var fail_code: u31 = app_internal;

/// Fails the current request with application error `code` (> 0): `return mm.fail(404);`. The caller of this
/// service sees `error.App` (C: MM_ERR_APP); HTTP ingress answers 500 naming the code.
pub fn fail(code: u31) error{Fail} {
    fail_code = if (code == 0) app_internal else code;
    return error.Fail;
}

/// The negative i64 `mm_handle` returns for a handler's result, or null if it succeeded. Handlers may return
/// `void` or an error union.
inline fn failure(result: anytype) ?i64 {
    const info = @typeInfo(@TypeOf(result));
    if (info != .error_union) return null;
    const from_host = comptime mayBeHostError(info.error_union.error_set);
    if (result) |_| return null else |err| return handlerError(err, from_host);
}

/// Whether error set `E` holds an error of the host's (a `CallError` or `StorageError` code), whose message is
/// then worth logging. Decided at compile time, so services that never call the host do not link `lastError`.
fn mayBeHostError(comptime E: type) bool {
    const names = @typeInfo(E).error_set.error_names orelse return true; // anyerror
    for (names) |name| {
        if (errorCode(@field(anyerror, name)) != 0) return true;
    }
    return false;
}

fn handlerError(err: anyerror, comptime from_host: bool) i64 {
    return switch (err) {
        error.Fail => -@as(i64, fail_code),
        error.OutOfMemory => -@as(i64, app_no_memory),
        else => blk: {
            if (from_host and errorCode(err) != 0) {
                log(.err, "micromono: handler failed with error.{s}: {s}", .{ @errorName(err), lastError() });
            } else {
                log(.err, "micromono: handler failed with error.{s}", .{@errorName(err)});
            }
            break :blk -@as(i64, app_internal);
        },
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Calling other services
// ---------------------------------------------------------------------------------------------------------------

/// Size of the reply buffer lent to the host; larger replies are fetched with `take_reply`.
const call_reply_start = 16 * 1024;

/// A failure this SDK detected itself (the host's `last_error` knows nothing of it), or null.
var local_error: ?[]const u8 = null;

fn len32(n: usize) CallError!i32 {
    return std.math.cast(i32, n) orelse {
        local_error = "micromono: a target or payload is larger than 2 GiB";
        return error.TooLarge;
    };
}

/// A result a host import wrote into a buffer this guest lent it: the bytes, or the import's negative code
/// (`out_of_memory` when this guest could not allocate the buffer).
const Fetched = union(enum) { bytes: []u8, failed: i32, out_of_memory };

/// Runs an import that writes a result of any size into a buffer lent from the arena (`call`, `kv_get`, `kv_list`,
/// `sql_exec`): `run(ctx, buf)` calls it and returns the result's length or a negative code. The arena grows and
/// shrinks its newest allocation in place, so a result that fits costs no copy, and the unused tail is given back.
/// One that does not fit is held by the host and fetched with take_reply.
fn fetch(start: usize, ctx: anytype, comptime run: fn (@TypeOf(ctx), []u8) i32) Fetched {
    const a = arena();
    var buf = a.alloc(u8, start) catch return .out_of_memory;
    const n = run(ctx, buf);
    if (n < 0) {
        a.free(buf);
        local_error = null; // the host's last_error describes this failure
        return .{ .failed = n };
    }
    const len: usize = @intCast(n);
    if (len <= buf.len) {
        _ = a.resize(buf, len); // give back the unused tail; if that fails it just waits for the next entry
        return .{ .bytes = buf[0..len] };
    }
    a.free(buf);
    buf = a.alloc(u8, len) catch return .out_of_memory; // the host drops the held result at the next import
    const got = host.take_reply(buf.ptr, n);
    if (got < 0) {
        local_error = null;
        return .{ .failed = got };
    }
    return .{ .bytes = buf[0..@intCast(got)] };
}

/// Calls service `target` (which must be in this service's `calls` allowlist) and waits for its reply. The
/// reply lives in `arena()` memory until the handler returns. Replies of any size are handled.
pub fn call(target: []const u8, req: []const u8) CallError![]const u8 {
    const Args = struct { target: []const u8, target_len: i32, req: []const u8, req_len: i32 };
    const args: Args = .{
        .target = target,
        .target_len = try len32(target.len),
        .req = req,
        .req_len = try len32(req.len),
    };
    const result = fetch(call_reply_start, args, struct {
        fn run(c: Args, buf: []u8) i32 {
            return host.call(c.target.ptr, c.target_len, c.req.ptr, c.req_len, buf.ptr, @intCast(buf.len));
        }
    }.run);
    return switch (result) {
        .bytes => |bytes| bytes,
        .failed => |code| errorFromCode(code),
        .out_of_memory => localFailure("micromono.call: out of memory for the reply"),
    };
}

/// Queues `msg` for `target` (allowlisted like `call`), which handles it later as kind MESSAGE. Failures after
/// queueing are never reported back; `error.Overloaded` means its mailbox is full.
pub fn send(target: []const u8, msg: []const u8) CallError!void {
    const rc = host.send(target.ptr, try len32(target.len), msg.ptr, try len32(msg.len));
    if (rc < 0) {
        local_error = null;
        return errorFromCode(rc);
    }
}

fn localFailure(why: []const u8) CallError {
    local_error = why;
    return error.OutOfMemory;
}

/// The length of a W3C traceparent value, "00-<trace id>-<span id>-<flags>".
pub const traceparent_len = 55;

/// The current request's trace context (docs/tracing.md) as a W3C traceparent value: the trace id and the span the
/// daemon opened for this request, call or message. Null when the daemon's tracing is off (an incoming HTTP
/// request's own `traceparent` header is still in its headers). Valid until the handler returns.
pub fn traceContext() ?[]const u8 {
    const buf = arena().alloc(u8, traceparent_len) catch return null;
    const n = host.trace_context(buf.ptr, traceparent_len);
    if (n != traceparent_len) return null;
    return buf;
}

/// The message of the last failed `call`, `send`, storage, SQL or alarm function ("" if none), valid until the
/// handler returns.
pub fn lastError() []const u8 {
    if (local_error) |why| return why;
    var small: [256]u8 = undefined;
    const n = host.last_error(&small, small.len);
    if (n <= 0) return "";
    const len: usize = @intCast(n);
    if (len <= small.len) return arena().dupe(u8, small[0..len]) catch "(out of memory reading last_error)";
    const buf = arena().alloc(u8, len) catch return "(out of memory reading last_error)";
    const again = host.last_error(buf.ptr, n);
    return buf[0..@intCast(std.math.clamp(again, 0, n))];
}

// ---------------------------------------------------------------------------------------------------------------
// Actors: key, key-value storage, SQL, alarm (docs/abi.md "Actors")
//
// These work in a service declared `kind = "actor"`; elsewhere they fail with `error.NotActor`. Every write is part
// of the current request's transaction (committed when the handler returns, rolled back when it fails); reads see
// the request's own writes. Everything they return lives in `arena()` memory, valid until the handler returns.
// ---------------------------------------------------------------------------------------------------------------

/// The buffer lent to the host for storage reads (mostly small); larger results are fetched with take_reply.
const read_start = 4 * 1024;

/// A length as the ABI's i32; larger ones are rejected here.
fn storageLen(n: usize) StorageError!i32 {
    return std.math.cast(i32, n) orelse {
        local_error = "micromono: a key, value or statement is larger than 2 GiB";
        return error.Invalid;
    };
}

/// Turns an import's result into an error when it is negative; returns it otherwise.
fn check(rc: i32) StorageError!i32 {
    if (rc >= 0) return rc;
    local_error = null;
    return storageErrorFromCode(rc);
}

/// The bytes of a fetched result, or its error.
fn fetched(result: Fetched, comptime what: []const u8) StorageError![]u8 {
    return switch (result) {
        .bytes => |bytes| bytes,
        .failed => |code| storageErrorFromCode(code),
        .out_of_memory => {
            local_error = "micromono." ++ what ++ ": out of memory for the result";
            return error.OutOfMemory;
        },
    };
}

/// This actor's key (from its route `/counter/{key}` or its caller's target "counter/<key>"), or null when the
/// service is not an actor.
pub fn actorKey() ?[]const u8 {
    var cap: usize = 512; // the longest key the ABI allows; a longer one is read again in full
    for (0..2) |_| {
        const buf = arena().alloc(u8, cap) catch return null;
        const n = host.actor_key(buf.ptr, @intCast(cap));
        if (n < 0) {
            local_error = null;
            return null;
        }
        if (@as(usize, @intCast(n)) <= cap) return buf[0..@intCast(n)];
        cap = @intCast(n);
    }
    return null;
}

/// The actor's key-value storage: byte-string keys (1 to 2048 bytes) in bytewise order, byte-string values.
pub const kv = struct {
    /// The value stored under `key`, or null when there is none. Values of any size are handled.
    pub fn get(key: []const u8) StorageError!?[]const u8 {
        const Args = struct { key: []const u8, key_len: i32 };
        const result = fetch(read_start, Args{ .key = key, .key_len = try storageLen(key.len) }, struct {
            fn run(c: Args, buf: []u8) i32 {
                return host.kv_get(c.key.ptr, c.key_len, buf.ptr, @intCast(buf.len));
            }
        }.run);
        if (result == .failed and result.failed == -11) return null; // MM_ERR_NOT_FOUND
        return try fetched(result, "kv.get");
    }

    /// Stores `value` (may be empty) under `key`. `error.StorageFull` means nothing was written.
    pub fn put(key: []const u8, value: []const u8) StorageError!void {
        _ = try check(host.kv_put(key.ptr, try storageLen(key.len), value.ptr, try storageLen(value.len)));
    }

    /// Deletes `key`; true when a value was deleted, false when there was none.
    pub fn delete(key: []const u8) StorageError!bool {
        return try check(host.kv_delete(key.ptr, try storageLen(key.len))) == 1;
    }

    /// The integer stored under `key` as decimal text ("42", "-7"), or null when there is none.
    /// `error.Invalid` when the value is not a decimal i64.
    pub fn getInt(key: []const u8) StorageError!?i64 {
        const text = try get(key) orelse return null;
        return parseDecimal(text) orelse {
            local_error = "micromono.kv.getInt: the value is not a decimal i64";
            return error.Invalid;
        };
    }

    /// Stores `value` under `key` as decimal text, which reads well in any tool (and in the C SDK's helpers).
    pub fn putInt(key: []const u8, value: i64) StorageError!void {
        var text: [20]u8 = undefined;
        return put(key, std.fmt.bufPrint(&text, "{d}", .{value}) catch unreachable);
    }

    /// Which entries `list` returns; the defaults list them all. An empty string means "no bound".
    pub const ListOptions = struct {
        prefix: []const u8 = "", // only keys that start with it
        start: []const u8 = "", //  only keys >= start
        end: []const u8 = "", //    only keys < end
        limit: u32 = 0, //          at most this many entries; 0: no limit
        reverse: bool = false, //   largest key first
    };

    pub const Entry = struct { key: []const u8, value: []const u8 };

    /// The entries `list` found, in order: `while (it.next()) |entry| ...`.
    pub const Iterator = struct {
        count: usize,
        remaining: usize,
        rest: []const u8,

        pub fn next(it: *Iterator) ?Entry {
            if (it.remaining == 0) return null;
            it.remaining -= 1;
            const key_len = std.mem.readInt(u32, it.rest[0..4], .little);
            const value_len = std.mem.readInt(u32, it.rest[4..8], .little);
            const entry: Entry = .{ .key = it.rest[8..][0..key_len], .value = it.rest[8 + key_len ..][0..value_len] };
            it.rest = it.rest[8 + key_len + value_len ..];
            return entry;
        }
    };

    /// Lists entries in key order (bytewise), filtered by `options`:
    /// `var it = try mm.kv.list(.{ .prefix = "user/", .limit = 10 }); while (it.next()) |e| ...`.
    pub fn list(options: ListOptions) StorageError!Iterator {
        const strings = options.prefix.len + options.start.len + options.end.len;
        const opts = arena().alloc(u8, 20 + strings) catch return error.OutOfMemory;
        std.mem.writeInt(u32, opts[0..4], options.limit, .little);
        std.mem.writeInt(u32, opts[4..8], @intFromBool(options.reverse), .little);
        std.mem.writeInt(u32, opts[8..12], @intCast(options.prefix.len), .little);
        std.mem.writeInt(u32, opts[12..16], @intCast(options.start.len), .little);
        std.mem.writeInt(u32, opts[16..20], @intCast(options.end.len), .little);
        var at: usize = 20;
        for ([_][]const u8{ options.prefix, options.start, options.end }) |part| {
            @memcpy(opts[at..][0..part.len], part);
            at += part.len;
        }
        const Args = struct { opts: []const u8, opts_len: i32 };
        const block = try fetched(fetch(read_start, Args{ .opts = opts, .opts_len = try storageLen(opts.len) }, struct {
            fn run(c: Args, buf: []u8) i32 {
                return host.kv_list(c.opts.ptr, c.opts_len, buf.ptr, @intCast(buf.len));
            }
        }.run), "kv.list");
        // Check the whole block once, so that `next` never reads past it.
        if (block.len < 4) return malformed("kv.list");
        const count = std.mem.readInt(u32, block[0..4], .little);
        var rest = block[4..];
        for (0..count) |_| {
            if (rest.len < 8) return malformed("kv.list");
            const key_len = std.mem.readInt(u32, rest[0..4], .little);
            const size = @as(usize, key_len) + std.mem.readInt(u32, rest[4..8], .little);
            if (rest.len - 8 < size) return malformed("kv.list");
            rest = rest[8 + size ..];
        }
        return .{ .count = count, .remaining = count, .rest = block[4..] };
    }
};

fn malformed(comptime what: []const u8) StorageError {
    local_error = "micromono." ++ what ++ ": the host's result does not decode";
    return error.Invalid;
}

/// All of `text` as a decimal i64 ("-" allowed; no "+", "_", spaces or other bytes), or null.
fn parseDecimal(text: []const u8) ?i64 {
    const digits = if (std.mem.startsWith(u8, text, "-")) text[1..] else text;
    if (digits.len == 0) return null;
    for (digits) |c| if (!std.ascii.isDigit(c)) return null;
    return std.fmt.parseInt(i64, text, 10) catch null;
}

/// The actor's own SQLite database.
pub const sql = struct {
    /// The type tags of the ABI (and SQLite's five storage classes).
    pub const Type = enum(u8) { null = 0, integer = 1, real = 2, text = 3, blob = 4 };

    /// A statement parameter or a result cell. Text is UTF-8.
    pub const Value = union(Type) {
        null,
        integer: i64,
        real: f64,
        text: []const u8,
        blob: []const u8,
    };

    /// The result of a statement; its slices live in `arena()` memory.
    pub const Result = struct {
        /// The column names.
        columns: []const []const u8,
        /// The number of rows.
        rows: usize,
        /// The cells, row after row (`rows * columns.len` of them).
        values: []const Value,
        /// Rows the statement inserted, updated or deleted.
        changes: u32,
        /// The rowid of the last INSERT on this actor's database.
        last_insert_rowid: i64,

        /// The cells of row `i` (which must be < `rows`).
        pub fn row(r: *const Result, i: usize) []const Value {
            return r.values[i * r.columns.len ..][0..r.columns.len];
        }

        /// The cell at (`row_index`, `col`), or `.null` when either is out of range.
        pub fn get(r: *const Result, row_index: usize, col: usize) Value {
            if (row_index >= r.rows or col >= r.columns.len) return .null;
            return r.values[row_index * r.columns.len + col];
        }

        /// An INTEGER cell's value; null for the other types and out-of-range cells.
        pub fn int(r: *const Result, row_index: usize, col: usize) ?i64 {
            return switch (r.get(row_index, col)) {
                .integer => |v| v,
                else => null,
            };
        }

        /// A TEXT or BLOB cell's bytes; null for the other types and out-of-range cells.
        pub fn text(r: *const Result, row_index: usize, col: usize) ?[]const u8 {
            return switch (r.get(row_index, col)) {
                .text, .blob => |v| v,
                else => null,
            };
        }
    };

    /// Runs one SQL statement (SQLite's dialect) on this actor's database, binding `params` to its `?`
    /// placeholders: `try mm.sql.exec("SELECT text FROM t WHERE id > ?", &.{.{ .integer = since }})`.
    /// `error.Sql` when it fails or is not allowed (several statements, ATTACH, BEGIN/COMMIT/SAVEPOINT, PRAGMA);
    /// `lastError()` then has SQLite's message.
    pub fn exec(statement: []const u8, params: []const Value) StorageError!Result {
        const encoded = try encodeParams(params);
        const Args = struct { sql: []const u8, sql_len: i32, params: []const u8, params_len: i32 };
        const args: Args = .{
            .sql = statement,
            .sql_len = try storageLen(statement.len),
            .params = encoded,
            .params_len = try storageLen(encoded.len),
        };
        const block = try fetched(fetch(read_start, args, struct {
            fn run(c: Args, buf: []u8) i32 {
                return host.sql_exec(c.sql.ptr, c.sql_len, c.params.ptr, c.params_len, buf.ptr, @intCast(buf.len));
            }
        }.run), "sql.exec");
        return decodeResult(block) catch |err| switch (err) {
            error.OutOfMemory => error.OutOfMemory,
            error.Malformed => malformed("sql.exec"),
        };
    }

    /// `u32 count`, then each value tagged (docs/abi.md `sql_exec`); empty when there are none.
    fn encodeParams(params: []const Value) StorageError![]const u8 {
        if (params.len == 0) return "";
        var out: Buf = .{ .gpa = arena() };
        var word: [8]u8 = undefined;
        std.mem.writeInt(u32, word[0..4], std.math.cast(u32, params.len) orelse return error.Invalid, .little);
        try out.append(word[0..4]);
        for (params) |param| {
            try out.appendByte(@backingInt(std.meta.activeTag(param)));
            switch (param) {
                .null => {},
                .integer => |v| {
                    std.mem.writeInt(i64, &word, v, .little);
                    try out.append(&word);
                },
                .real => |v| {
                    std.mem.writeInt(u64, &word, @bitCast(v), .little);
                    try out.append(&word);
                },
                .text, .blob => |bytes| {
                    const len = std.math.cast(u32, bytes.len) orelse return error.Invalid;
                    std.mem.writeInt(u32, word[0..4], len, .little);
                    try out.append(word[0..4]);
                    try out.append(bytes);
                },
            }
        }
        return out.items();
    }

    fn decodeResult(block: []const u8) error{ OutOfMemory, Malformed }!Result {
        var r: Reader = .{ .rest = block };
        const column_count = try r.int(u32);
        const row_count = try r.int(u32);
        const changes = try r.int(u32);
        _ = try r.int(u32); // reserved
        const last_insert_rowid = try r.int(i64);
        // Every name takes at least 4 bytes and every cell at least 1: bound the counts before allocating.
        if (column_count > r.rest.len / 4) return error.Malformed;
        if (column_count != 0 and row_count > r.rest.len / column_count) return error.Malformed;
        const columns = try arena().alloc([]const u8, column_count);
        for (columns) |*name| name.* = try r.sized();
        const values = try arena().alloc(Value, @as(usize, row_count) * column_count);
        for (values) |*value| {
            const tag = std.enums.fromInt(Type, try r.int(u8)) orelse return error.Malformed;
            value.* = switch (tag) {
                .null => .null,
                .integer => .{ .integer = try r.int(i64) },
                .real => .{ .real = @bitCast(try r.int(u64)) },
                .text => .{ .text = try r.sized() },
                .blob => .{ .blob = try r.sized() },
            };
        }
        if (r.rest.len != 0) return error.Malformed;
        return .{
            .columns = columns,
            .rows = row_count,
            .values = values,
            .changes = changes,
            .last_insert_rowid = last_insert_rowid,
        };
    }

    /// Reads little-endian integers and u32-length-prefixed byte strings off the front of a block.
    const Reader = struct {
        rest: []const u8,

        fn int(r: *Reader, comptime T: type) error{Malformed}!T {
            const n = @sizeOf(T);
            if (r.rest.len < n) return error.Malformed;
            defer r.rest = r.rest[n..];
            return std.mem.readInt(T, r.rest[0..n], .little);
        }

        fn sized(r: *Reader) error{Malformed}![]const u8 {
            const len = try r.int(u32);
            if (r.rest.len < len) return error.Malformed;
            defer r.rest = r.rest[len..];
            return r.rest[0..len];
        }
    };
};

/// The actor's alarm: at most one, a wall-clock time in milliseconds since the Unix epoch (>= 0: the ABI reports
/// "none" as -1), usually `nowMs()` plus a delay; a time in the past fires at once. When it is due the actor gets
/// `handleAlarm`. Setting and clearing it are part of the request's transaction.
pub const alarm = struct {
    /// Sets (replaces) the alarm.
    pub fn set(at_ms: i64) StorageError!void {
        _ = try check(host.alarm_set(at_ms));
    }

    /// The alarm's time, or null when none is set.
    pub fn get() StorageError!?i64 {
        const at = host.alarm_get();
        if (at == -1) return null;
        if (at < 0) {
            local_error = null;
            return storageErrorFromCode(std.math.cast(i32, at) orelse 0);
        }
        return at;
    }

    /// Clears the alarm.
    pub fn delete() StorageError!void {
        _ = try check(host.alarm_delete());
    }
};

/// The wall clock in milliseconds since the Unix epoch (WASI `clock_time_get`, realtime clock), for alarm times.
pub fn nowMs() i64 {
    var ns: u64 = 0;
    if (host.clock_time_get(0, 1_000_000, &ns) != 0) return 0;
    return @intCast(ns / std.time.ns_per_ms);
}

// ---------------------------------------------------------------------------------------------------------------
// WebSockets (docs/abi.md "WebSockets", docs/stream.md)
// ---------------------------------------------------------------------------------------------------------------

/// An actor's WebSocket connections (services with `websocket = true`). The daemon holds them; the actor sees
/// each as a u64 id, unique in the daemon's life, in `handleWsOpen`, `handleWsMessage` and `handleWsClose` (see
/// `service`), and answers with these functions, from any of its handlers (an HTTP request may publish too).
///
/// What they send leaves through the output gate: once the current request's writes are durable, and not at all
/// if the request fails (an error, a trap, a refused open). So success means "queued with this request", not
/// "delivered". Messages sent or published while handling an open are delivered after the open (and after the
/// messages a resuming client missed). The data is copied during the call: any slice will do.
pub const ws = struct {
    /// A message's type. Text is UTF-8 (the daemon closes a client whose text is not, with 1007).
    pub const Type = enum(u32) { text = 1, binary = 2, _ };

    /// Why a WebSocket function failed: the host's MM_ERR_* codes. `lastError()` gives the message.
    pub const Error = error{
        NotFound, //   -11  no such connection of this actor: it closed meanwhile (normal; its close follows)
        Invalid, //    -15  a bad type, code, reason or tag, or text that is not UTF-8 (see each function)
        NotActor, //   -14  this service is not an actor
        Unexpected, //      a code this SDK does not expect here (a newer host)
    };

    /// Close codes (docs/stream.md "Close codes"): `close` takes `close_normal` or an application code from 3000
    /// to 4999; `handleWsClose` also reports the daemon's, `close_lost` among them.
    pub const close_normal: u16 = 1000;
    pub const close_lost: u16 = 1006;

    /// Whom `publish` reaches: every connection, or with `tag` only those tagged with it (see `tag`).
    pub const PublishOptions = struct { tag: []const u8 = "" };

    /// Sends `data` as one message of `kind` to connection `conn` only; it is not numbered and not kept for
    /// resuming (docs/stream.md): text reaches the client wrapped as `{"data": "<the text>"}`, binary after 8 zero
    /// bytes (the sdk/ clients unwrap both). `error.NotFound` when the connection is closed; `error.Invalid` for
    /// text that is not UTF-8.
    pub fn send(conn: u64, kind: Type, data: []const u8) Error!void {
        return result(host.ws_send(@bitCast(conn), typeCode(kind), data.ptr, try lengthOf(data.len)));
    }

    /// Publishes `data` as one message of `kind` to every connection of this actor (with `.tag`, to those tagged
    /// with it). The daemon numbers it in the actor's stream and keeps it for clients that resume (`?since=`): a
    /// text message reaches clients as the frame `{"seq": N, "data": "<the text>"}`, a binary one as 8 bytes of
    /// seq then the bytes (docs/stream.md), so publish the payload itself, not a JSON envelope:
    /// `try mm.ws.publish(.text, text, .{})`. `error.Invalid` for text that is not UTF-8 or a tag over 64 bytes.
    pub fn publish(kind: Type, data: []const u8, options: PublishOptions) Error!void {
        const tag_len = try lengthOf(options.tag.len);
        return result(host.ws_publish(typeCode(kind), data.ptr, try lengthOf(data.len), options.tag.ptr, tag_len));
    }

    /// Closes connection `conn` with `code` (`close_normal`, or 3000 to 4999) and `reason` (UTF-8, at most 123
    /// bytes; may be empty). `handleWsClose` follows for it later, as for any close. `error.NotFound` when it is
    /// closed already; `error.Invalid` for another code or a longer reason.
    pub fn close(conn: u64, code: u16, reason: []const u8) Error!void {
        return result(host.ws_close(@bitCast(conn), code, reason.ptr, try lengthOf(reason.len)));
    }

    /// Adds `name` (1 to 64 bytes) to connection `conn`'s tags, for `publish`. A connection may carry several;
    /// they last as long as it does (the daemon keeps them, not the actor's memory). `error.NotFound` or
    /// `error.Invalid`.
    pub fn tag(conn: u64, name: []const u8) Error!void {
        return result(host.ws_tag(@bitCast(conn), name.ptr, try lengthOf(name.len)));
    }

    fn typeCode(kind: Type) i32 {
        return @bitCast(@backingInt(kind));
    }

    fn lengthOf(n: usize) Error!i32 {
        return std.math.cast(i32, n) orelse {
            local_error = "micromono.ws: a message, reason or tag is larger than 2 GiB";
            return error.Invalid;
        };
    }

    fn result(rc: i32) Error!void {
        if (rc >= 0) return;
        local_error = null; // the host's last_error describes this failure
        return switch (rc) {
            -11 => error.NotFound,
            -14 => error.NotActor,
            -15 => error.Invalid,
            else => error.Unexpected,
        };
    }

    /// A WebSocket request's head: `u64 conn`, then a u32 (the open's path length, the message's type, the
    /// close's code); `rest` is what follows. Null when the request is shorter than that.
    const Head = struct { conn: u64, word: u32, rest: []const u8 };

    fn decode(in: []const u8) ?Head {
        if (in.len < 12) return null;
        return .{
            .conn = std.mem.readInt(u64, in[0..8], .little),
            .word = std.mem.readInt(u32, in[8..12], .little),
            .rest = in[12..],
        };
    }

    /// `MM_KIND_WS_OPEN`: `u64 conn`, `u32 path_len`, `u32 query_len`, the path, the query.
    const Open = struct { conn: u64, path: []const u8, query: []const u8 };

    fn decodeOpen(in: []const u8) ?Open {
        const head = decode(in) orelse return null;
        if (head.rest.len < 4) return null;
        const query_len: usize = std.mem.readInt(u32, head.rest[0..4], .little);
        const strings = head.rest[4..];
        if (head.word > strings.len or query_len > strings.len - head.word) return null;
        return .{ .conn = head.conn, .path = strings[0..head.word], .query = strings[head.word..][0..query_len] };
    }
};

// ---------------------------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------------------------

pub const Level = enum(i32) { debug = 0, info = 1, warn = 2, err = 3 };

/// Where `log` formats a message longer than its stack buffer: four times the daemon's own limit on a line (4 KiB,
/// which it cuts to, saying how much), so the daemon's cut is the one a reader sees. Static and zeroed, so it adds
/// nothing to the module's size; a message longer than this is cut here, silently.
var long_line: [16 * 1024]u8 = undefined;

/// Writes one structured `guest.log` line; the message is formatted with `std.fmt`, on the stack up to 1 KiB and
/// in a 16 KiB static buffer beyond (see `long_line`).
pub fn log(level: Level, comptime fmt: []const u8, args: anytype) void {
    var line: [1024]u8 = undefined;
    const msg = std.fmt.bufPrint(&line, fmt, args) catch long: {
        var w: std.Io.Writer = .fixed(&long_line);
        w.print(fmt, args) catch {}; // a full buffer truncates the message
        break :long w.buffered();
    };
    host.log(@backingInt(level), msg.ptr, @intCast(msg.len));
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP (docs/abi.md "HTTP encoding")
// ---------------------------------------------------------------------------------------------------------------

/// A decoded HTTP request; every slice points into the request the host wrote. `path` is raw (percent-encoded,
/// starts with '/'), `query` has no '?'.
pub const HttpRequest = struct {
    method: []const u8,
    path: []const u8,
    query: []const u8,
    body: []const u8,
    header_count: usize,
    /// The header lines as received (`Name: value` CRLF each, docs/abi.md); read them with `header` or `headers`.
    raw_headers: []const u8,

    pub const Header = struct { name: []const u8, value: []const u8 };

    pub const HeaderIterator = struct {
        rest: []const u8,

        pub fn next(it: *HeaderIterator) ?Header {
            const eol = std.mem.indexOf(u8, it.rest, "\r\n") orelse return null;
            const line = it.rest[0..eol];
            it.rest = it.rest[eol + 2 ..];
            const colon = std.mem.indexOfScalar(u8, line, ':') orelse line.len;
            const value = if (colon < line.len) line[colon + 1 ..] else line[line.len..];
            return .{ .name = line[0..colon], .value = std.mem.trim(u8, value, " \t") };
        }
    };

    /// All headers in order (names as the client wrote them; values without the spaces or tabs around them).
    pub fn headers(req: *const HttpRequest) HeaderIterator {
        return .{ .rest = req.raw_headers };
    }

    /// The value of the first header called `name` (compared ASCII-case-insensitively), or null.
    pub fn header(req: *const HttpRequest, name: []const u8) ?[]const u8 {
        var it = req.headers();
        while (it.next()) |h| {
            if (std.ascii.eqlIgnoreCase(h.name, name)) return h.value;
        }
        return null;
    }

    /// Decodes a request and checks that its header block is whole lines. Null if the encoding is broken.
    fn decode(in: []const u8) ?HttpRequest {
        if (in.len < 16) return null;
        const method_len: usize = std.mem.readInt(u16, in[0..2], .little);
        const path_len: usize = std.mem.readInt(u32, in[4..8], .little);
        const query_len: usize = std.mem.readInt(u32, in[8..12], .little);
        const body_len: usize = std.mem.readInt(u32, in[12..16], .little);
        var rest = in[16..];
        const method = cut(&rest, method_len) orelse return null;
        const path = cut(&rest, path_len) orelse return null;
        const query = cut(&rest, query_len) orelse return null;
        if (body_len > rest.len) return null;
        const raw_headers = rest[0 .. rest.len - body_len];
        if (raw_headers.len != 0 and !std.mem.endsWith(u8, raw_headers, "\r\n")) return null;
        return .{
            .method = method,
            .path = path,
            .query = query,
            .body = rest[rest.len - body_len ..],
            .header_count = std.mem.count(u8, raw_headers, "\r\n"),
            .raw_headers = raw_headers,
        };
    }

    fn cut(rest: *[]const u8, n: usize) ?[]const u8 {
        if (n > rest.len) return null;
        const head = rest.*[0..n];
        rest.* = rest.*[n..];
        return head;
    }
};

/// The response a `handleHttp` fills in. It starts as 200 with no headers and an empty body.
pub const HttpResponse = struct {
    status: u16 = 200,
    /// The body (SDK-owned). Append to it, or use `setBody`/`setBodyRef`.
    body: *Buf,
    /// The encoded header block: 4 bytes reserved for status and count, then the entries (SDK-owned).
    head: *Buf,
    header_count: u16 = 0,
    body_ref: ?[]const u8 = null,

    /// Adds a header (name and value of at most 65535 bytes each; the host writes content-length, connection
    /// and date itself and drops those, and transfer-encoding, if given).
    pub fn header(res: *HttpResponse, name: []const u8, value: []const u8) error{ OutOfMemory, HeaderTooLarge }!void {
        const name_len = std.math.cast(u16, name.len) orelse return error.HeaderTooLarge;
        const value_len = std.math.cast(u16, value.len) orelse return error.HeaderTooLarge;
        if (res.header_count == std.math.maxInt(u16)) return error.HeaderTooLarge;
        var lens: [4]u8 = undefined;
        std.mem.writeInt(u16, lens[0..2], name_len, .little);
        std.mem.writeInt(u16, lens[2..4], value_len, .little);
        try res.head.append(&lens);
        try res.head.append(name);
        try res.head.append(value);
        res.header_count += 1;
    }

    /// Replaces the body with a copy of `bytes`.
    pub fn setBody(res: *HttpResponse, bytes: []const u8) Allocator.Error!void {
        res.body_ref = null;
        res.body.clear();
        try res.body.append(bytes);
    }

    /// Uses `bytes` as the body without copying it now; it must stay valid until the handler returns (request
    /// data, call replies, arena memory and globals qualify).
    pub fn setBodyRef(res: *HttpResponse, bytes: []const u8) void {
        res.body_ref = bytes;
    }

    /// Writes status and header count into the reserved bytes and joins header block and body: the reply.
    fn finish(res: *HttpResponse) Allocator.Error![]const u8 {
        const prefix = res.head.list.items[0..4];
        std.mem.writeInt(u16, prefix[0..2], res.status, .little);
        std.mem.writeInt(u16, prefix[2..4], res.header_count, .little);
        if (res.body_ref) |body| {
            try res.head.append(body);
            return res.head.items();
        }
        // Put the header block in front of the body rather than appending the body to it: a large body then
        // needs one buffer of its size, not two.
        try res.body.list.insertSlice(res.body.gpa, 0, res.head.items());
        return res.body.items();
    }
};

// ---------------------------------------------------------------------------------------------------------------
// ABI exports
// ---------------------------------------------------------------------------------------------------------------

var inbox: []u8 = &.{};
var reply_buf: Buf = .{};
var http_head: Buf = .{};
var http_body: Buf = .{};

/// Packs a reply for the host: (ptr << 32) | len. Replies must start below 2 GiB (bit 63 is the sign).
fn replyOf(bytes: []const u8) i64 {
    const ptr: usize = @intFromPtr(bytes.ptr);
    if (ptr >= 0x8000_0000) return -@as(i64, app_internal);
    return @as(i64, @intCast(ptr)) << 32 | @as(i64, @intCast(bytes.len));
}

fn wsBadRequest() i64 {
    log(.err, "micromono: the WebSocket request from the host does not decode", .{});
    return -@as(i64, app_bad_request);
}

/// What every entry into a handler starts with: a fresh arena and no error left from the previous one.
fn beginEntry() void {
    _ = arena_state.reset(.retain_capacity);
    local_error = null;
    fail_code = app_internal;
}

/// Exports the ABI for service `S`, a namespace (usually `@This()` of the service's root file) that declares
/// any of `handleHttp`, `handleCall`, `handleMessage` and, for actors, `handleAlarm`, `schema_version`,
/// `handleMigrate`, `handleWsOpen`, `handleWsMessage` and `handleWsClose`. Call it from a `comptime` block.
///
/// Actors: `pub fn handleAlarm(scheduled_ms: u64, attempt: u32) !void` runs when the alarm set for `scheduled_ms`
/// is due (`attempt` is 1 the first time); an error rolls it back and has it retried with backoff, up to 10
/// attempts. The alarm is cleared when it succeeds, unless it set a new one. `pub const schema_version: i32 = n`
/// exports `mm_schema_version` and `mm_migrate`: before the first request an actor handles with this build, when
/// its stored version is lower, the host calls `handleMigrate(from)` in that request's transaction (an error, or
/// a trap, fails the request and leaves the version as it was). Without `handleMigrate` a version bump succeeds
/// with nothing to convert.
///
/// WebSockets (actors with `websocket = true`, see `ws`); each handler may return `void` or an error union:
///
/// * `pub fn handleWsOpen(conn: u64, path: []const u8, query: []const u8) !void`: client `conn` connected on
///   `path` (raw, percent-encoded, starts with '/') with `query` (no '?', and no `since`, which the daemon handles
///   itself). Returning normally accepts it; an error refuses it (the client is closed with 1008, and everything
///   the request wrote or sent is dropped): `return mm.fail(403)` names the code. Without it, every connection
///   is accepted.
/// * `pub fn handleWsMessage(conn: u64, kind: mm.ws.Type, data: []const u8) !void`: client `conn` sent a message
///   (`.text`, which the daemon checked is UTF-8, or `.binary`). An error fails it: its writes are rolled back and
///   nothing it sent leaves. Without it, messages are ignored.
/// * `pub fn handleWsClose(conn: u64, code: u16, reason: []const u8) !void`: connection `conn` is gone, closed
///   with `code` (by the client, by `ws.close` or by the daemon; `ws.close_lost` when it was lost). Without it,
///   closes are ignored.
///
/// Their slices point into the request: valid until the handler returns.
pub fn service(comptime S: type) void {
    const has_http = @hasDecl(S, "handleHttp");
    const has_call = @hasDecl(S, "handleCall");
    const has_message = @hasDecl(S, "handleMessage");
    const has_alarm = @hasDecl(S, "handleAlarm");
    const has_schema = @hasDecl(S, "schema_version");
    const has_migrate = @hasDecl(S, "handleMigrate");
    const has_ws_open = @hasDecl(S, "handleWsOpen");
    const has_ws_message = @hasDecl(S, "handleWsMessage");
    const has_ws_close = @hasDecl(S, "handleWsClose");
    if (!has_http and !has_call and !has_message and !has_alarm and !has_ws_open and !has_ws_message and !has_ws_close)
        @compileError("micromono.service: declare at least one of pub fn handleHttp, handleCall, handleMessage, " ++
            "handleAlarm, handleWsOpen, handleWsMessage, handleWsClose");
    if (has_migrate and !has_schema)
        @compileError("micromono.service: handleMigrate needs `pub const schema_version` (the version it migrates to)");

    const exports = struct {
        fn abiVersion() callconv(.c) i32 {
            return abi_version;
        }

        fn inboxFor(size: i32) callconv(.c) ?[*]u8 {
            const want: usize = @as(u32, @bitCast(size)); // the host treats sizes as unsigned
            if (want <= inbox.len and inbox.len != 0) return inbox.ptr;
            // Allocate before freeing: if this fails, the old inbox stays valid.
            const fresh = allocator.alloc(u8, @max(want, 1)) catch return null;
            allocator.free(inbox);
            inbox = fresh;
            return inbox.ptr;
        }

        fn handle(kind: i32, len: i32) callconv(.c) i64 {
            beginEntry();
            const n: usize = @as(u32, @bitCast(len));
            if (n > inbox.len) return -@as(i64, app_bad_request);
            const req = inbox[0..n];
            switch (@as(Kind, @fromBackingInt(@intCast(kind)))) {
                .http => if (has_http) {
                    const decoded = HttpRequest.decode(req) orelse {
                        log(.err, "micromono: the HTTP request from the host does not decode", .{});
                        return -@as(i64, app_bad_request);
                    };
                    http_head.clear();
                    http_body.clear();
                    http_head.append(&.{ 0, 0, 0, 0 }) catch return -@as(i64, app_no_memory);
                    var res: HttpResponse = .{ .body = &http_body, .head = &http_head };
                    if (failure(S.handleHttp(&decoded, &res))) |code| return code;
                    return replyOf(res.finish() catch return -@as(i64, app_no_memory));
                },
                .call => if (has_call) {
                    reply_buf.clear();
                    if (failure(S.handleCall(req, &reply_buf))) |code| return code;
                    return replyOf(reply_buf.items());
                },
                .message => if (has_message) {
                    if (failure(S.handleMessage(req))) |code| return code;
                    return 0;
                },
                .alarm => if (has_alarm) {
                    if (req.len < 12) return -@as(i64, app_bad_request); // u64 scheduled_ms, u32 attempt
                    const scheduled_ms = std.mem.readInt(u64, req[0..8], .little);
                    const attempt = std.mem.readInt(u32, req[8..12], .little);
                    if (failure(S.handleAlarm(scheduled_ms, attempt))) |code| return code;
                    return 0;
                },
                // Without a handler: accepted, ignored (and not decoded, so services without them pay nothing).
                .ws_open => if (has_ws_open) {
                    const open = ws.decodeOpen(req) orelse return wsBadRequest();
                    if (failure(S.handleWsOpen(open.conn, open.path, open.query))) |code| return code;
                    return 0;
                } else return 0,
                .ws_message => if (has_ws_message) {
                    const head = ws.decode(req) orelse return wsBadRequest();
                    const message_type: ws.Type = @fromBackingInt(head.word);
                    if (failure(S.handleWsMessage(head.conn, message_type, head.rest))) |code| return code;
                    return 0;
                } else return 0,
                .ws_close => if (has_ws_close) {
                    const head = ws.decode(req) orelse return wsBadRequest();
                    const close_code = std.math.cast(u16, head.word) orelse return wsBadRequest(); // RFC 6455: 16 bits
                    if (failure(S.handleWsClose(head.conn, close_code, head.rest))) |code| return code;
                    return 0;
                } else return 0,
                _ => {}, // a kind from a newer ABI: docs/abi.md lets the guest reject it with an error
            }
            return -@as(i64, app_not_implemented);
        }

        fn schemaVersion() callconv(.c) i32 {
            return S.schema_version;
        }

        fn migrate(from: i32) callconv(.c) i32 {
            beginEntry();
            if (has_migrate) {
                if (failure(S.handleMigrate(from))) |code| return @intCast(-code);
            }
            return 0;
        }
    };
    @export(&exports.abiVersion, .{ .name = "mm_abi_version" });
    @export(&exports.inboxFor, .{ .name = "mm_inbox" });
    @export(&exports.handle, .{ .name = "mm_handle" });
    if (has_schema) {
        @export(&exports.schemaVersion, .{ .name = "mm_schema_version" });
        @export(&exports.migrate, .{ .name = "mm_migrate" });
    }
}
