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
//! Every handler is optional; a request of a kind without one fails with application error 501. A handler's
//! error becomes an application error: `mm.fail(code)` gives that code, `error.OutOfMemory` gives 507, and any
//! other error gives 500 and a `guest.log` line naming the error.
//!
//! Build (wasm32-freestanding needs no WASI; the exports must be named because Zig only exports what the
//! linker is told to):
//!
//!     python -m ziglang build-exe -target wasm32-freestanding -fno-entry -O ReleaseSmall --stack 65536 \
//!         --export=mm_abi_version --export=mm_inbox --export=mm_handle \
//!         --dep micromono -Mroot=svc.zig -Mmicromono=sdk/zig/micromono.zig -femit-bin=svc.wasm
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
pub const Kind = enum(i32) { http = 1, call = 2, message = 3, _ };

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

/// The ABI's numeric code for a `CallError` (0 for `OutOfMemory`, which is this guest's own failure).
pub fn errorCode(err: CallError) i32 {
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
        error.Unexpected, error.OutOfMemory => 0,
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
    if (@typeInfo(@TypeOf(result)) != .error_union) return null;
    if (result) |_| return null else |err| return handlerError(err);
}

fn handlerError(err: anyerror) i64 {
    return switch (err) {
        error.Fail => -@as(i64, fail_code),
        error.OutOfMemory => -@as(i64, app_no_memory),
        else => blk: {
            log(.err, "micromono: handler failed with error.{s}", .{@errorName(err)});
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

/// Calls service `target` (which must be in this service's `calls` allowlist) and waits for its reply. The
/// reply lives in `arena()` memory until the handler returns. Replies of any size are handled.
pub fn call(target: []const u8, req: []const u8) CallError![]const u8 {
    const a = arena();
    const target_len = try len32(target.len);
    const req_len = try len32(req.len);
    // Lend the host an arena buffer. The arena grows and shrinks its newest allocation in place, so a reply that
    // fits costs no copy, and the unused tail is given back.
    var buf = a.alloc(u8, call_reply_start) catch return localFailure("micromono.call: out of memory for the reply");
    const n = host.call(target.ptr, target_len, req.ptr, req_len, buf.ptr, @intCast(buf.len));
    if (n < 0) {
        a.free(buf);
        local_error = null; // the host's last_error describes this failure
        return errorFromCode(n);
    }
    const len: usize = @intCast(n);
    if (len <= buf.len) {
        _ = a.resize(buf, len); // give back the unused tail; if that fails it just waits for the next entry
        return buf[0..len];
    }
    // The reply did not fit; the host holds it until the next call.
    a.free(buf);
    buf = a.alloc(u8, len) catch return localFailure("micromono.call: out of memory for the reply (dropped)");
    const got = host.take_reply(buf.ptr, n);
    if (got < 0) {
        local_error = null;
        return errorFromCode(got);
    }
    return buf[0..@intCast(got)];
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

/// The message of the last failed `call`/`send` ("" if none), valid until the handler returns.
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
// Logging
// ---------------------------------------------------------------------------------------------------------------

pub const Level = enum(i32) { debug = 0, info = 1, warn = 2, err = 3 };

/// Writes one structured `guest.log` line; the message is formatted with `std.fmt` and cut at 1 KiB.
pub fn log(level: Level, comptime fmt: []const u8, args: anytype) void {
    var line: [1024]u8 = undefined;
    var w: std.Io.Writer = .fixed(&line);
    w.print(fmt, args) catch {}; // a full buffer truncates the message
    const msg = w.buffered();
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

/// Exports the ABI for service `S`, a namespace (usually `@This()` of the service's root file) that declares
/// any of `handleHttp`, `handleCall` and `handleMessage`. Call it from a `comptime` block.
pub fn service(comptime S: type) void {
    const has_http = @hasDecl(S, "handleHttp");
    const has_call = @hasDecl(S, "handleCall");
    const has_message = @hasDecl(S, "handleMessage");
    if (!has_http and !has_call and !has_message)
        @compileError("micromono.service: declare at least one of pub fn handleHttp, handleCall, handleMessage");

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
            _ = arena_state.reset(.retain_capacity);
            local_error = null;
            fail_code = app_internal;
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
                _ => {}, // a kind from a newer ABI: docs/abi.md lets the guest reject it with an error
            }
            return -@as(i64, app_not_implemented);
        }
    };
    @export(&exports.abiVersion, .{ .name = "mm_abi_version" });
    @export(&exports.inboxFor, .{ .name = "mm_inbox" });
    @export(&exports.handle, .{ .name = "mm_handle" });
}
