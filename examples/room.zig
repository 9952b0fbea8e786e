//! room: a chat room per name: its history in SQL, expired by an alarm, live over a WebSocket (micromono example
//! actor, Zig).
//!
//! An actor (`kind = "actor"` and `websocket = true` in services.toml, routes `/room/{key}`, `/room/{key}/*` and
//! `/chat/{key}`): each room name is a key with its own instance and its own SQLite database.
//!
//! The chat, a WebSocket at /chat/<name> (docs/stream.md). Each text message a client sends is stored as a POST
//! stores it and published as it is (`mm.ws.publish`): the daemon sends it to every client of the room as the text
//! frame {"seq":<n>,"data":"<the text>"}, numbering it in the room's stream and replaying what a client missed when
//! it reconnects with ?since=<n>. That `seq` is the stream's number, for resuming; the history's ids below are
//! another count. Every text message is published, an empty one included (the daemon has checked it is UTF-8); the
//! size is bounded by the daemon: services.toml sets the room's `ws_max_message` to `max_text_bytes`, so a larger
//! message closes the socket with 1009 before it reaches the room. Should a larger one arrive anyway (another
//! `ws_max_message`), or text that is not UTF-8, it is not stored and only its sender gets an unnumbered
//! {"error":"message_too_large"} (or "message_not_utf8"), which the daemon wraps as a direct frame,
//! {"data":"<that text>"} (docs/stream.md). Binary messages are ignored: the chat
//! is text (ws_close cannot send 1003, it takes 1000 or 3000-4999). A WebSocket on the /room/ routes is refused
//! (1008). New clients load the history over HTTP, then follow the socket.
//!
//! Over HTTP every answer is JSON:
//!
//!   POST /room/<name>/messages           the body (UTF-8 text) is a new message: 200 {"seq":<id>}; it is
//!                                        published to the room's WebSocket clients too
//!   GET  /room/<name>/messages?since=N   messages with seq > N (default 0), oldest first, at most `page_size`:
//!                                        200 {"messages":[{"seq":1,"at":<ms>,"text":"..."},...]}
//!   GET  /room/<name>                    200 {"room":"<name>","messages":<count>}
//!   GET  /chat/<name>                    426 {"error":"upgrade_required"}: that route is the WebSocket
//!   400 an empty body, a body that is not UTF-8 or over `max_text_bytes` (413), or a bad `since`
//!   404 any other path, 405 any other method (with `allow`)
//!
//! Storage schema 1 (`schema_version`): `handleMigrate` creates the table when a room is first used (0 -> 1).
//! Retention: the first message of a room sets the alarm `retention_ms` ahead. Each time it fires it deletes the
//! messages older than `retention_ms` and, while messages remain, sets itself `retention_ms` ahead again; so a
//! message lives between one and two retention periods. An empty room has no alarm and costs nothing.

const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

pub const schema_version = 1;

const retention_ms: i64 = 24 * 60 * 60 * 1000;
const page_size = 100;
const max_text_bytes = 16 * 1024;

pub fn handleMigrate(from: i32) !void {
    if (from < 1) {
        _ = try mm.sql.exec(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, text TEXT NOT NULL)",
            &.{},
        );
    }
}

pub fn handleHttp(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    try res.header("content-type", "application/json");
    if (std.mem.startsWith(u8, req.path, "/chat/")) {
        try res.header("upgrade", "websocket");
        return answer(res, 426, "upgrade_required");
    }
    // The route is /room/<name> or /room/<name>/...: what follows the name picks the resource.
    if (!std.mem.startsWith(u8, req.path, "/room/")) return answer(res, 404, "not_found");
    const name_and_rest = req.path["/room/".len..];
    const resource = name_and_rest[(std.mem.indexOfScalar(u8, name_and_rest, '/') orelse name_and_rest.len)..];
    const get = std.mem.eql(u8, req.method, "GET");
    if (resource.len == 0) {
        if (!get) return notAllowed(res, "GET");
        return info(res);
    }
    if (std.mem.eql(u8, resource, "/messages")) {
        if (get) return list(req, res);
        if (std.mem.eql(u8, req.method, "POST")) return post(req, res);
        return notAllowed(res, "GET, POST");
    }
    return answer(res, 404, "not_found");
}

/// GET /room/<name>: the room's name and how many messages it holds.
fn info(res: *mm.HttpResponse) !void {
    const count = try mm.sql.exec("SELECT count(*) FROM messages", &.{});
    try res.body.append("{\"room\":");
    try res.body.appendJsonString(mm.actorKey() orelse "");
    try res.body.print(",\"messages\":{d}}}", .{count.int(0, 0) orelse 0});
}

/// POST /room/<name>/messages: stores the body as a message and publishes it to the chat's clients.
fn post(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    if (refusal(req.body)) |why| return answer(res, why.status, why.name);
    const seq = try store(req.body);
    // Best effort: the post is stored whatever happens to the chat (a manifest without `websocket = true` has none).
    mm.ws.publish(.text, req.body, .{}) catch |err| {
        mm.log(.warn, "room: publishing a posted message failed: error.{s}: {s}", .{ @errorName(err), mm.lastError() });
    };
    try res.body.print("{{\"seq\":{d}}}", .{seq});
}

/// Why a message is refused, as an HTTP status and an error name.
const Refusal = struct { status: u16, name: []const u8 };

fn refusal(text: []const u8) ?Refusal {
    if (text.len == 0) return .{ .status = 400, .name = "empty_message" };
    if (text.len > max_text_bytes) return .{ .status = 413, .name = "message_too_large" };
    if (!std.unicode.utf8ValidateSlice(text)) return .{ .status = 400, .name = "message_not_utf8" };
    return null;
}

/// Stores a message, arms the retention alarm if it is not armed, and returns the message's id.
fn store(text: []const u8) !i64 {
    const now = mm.nowMs();
    const inserted = try mm.sql.exec("INSERT INTO messages (at_ms, text) VALUES (?, ?)", &.{
        .{ .integer = now },
        .{ .text = text },
    });
    if (try mm.alarm.get() == null) try mm.alarm.set(now + retention_ms);
    return inserted.last_insert_rowid;
}

/// The chat socket is /chat/<name>; the /room/ routes are HTTP only.
pub fn handleWsOpen(conn: u64, path: []const u8, query: []const u8) !void {
    _ = conn;
    _ = query;
    if (!std.mem.startsWith(u8, path, "/chat/")) return mm.fail(404);
}

/// A client's message: stored, then published as it is (the daemon wraps it in {"seq":..,"data":..}). A publish
/// that fails fails the message, so the store is rolled back with it.
pub fn handleWsMessage(conn: u64, kind: mm.ws.Type, data: []const u8) !void {
    if (kind != .text) return; // binary messages are not part of the chat
    if (data.len > 0) if (refusal(data)) |why| { // an empty message is published like any other
        var frame: [64]u8 = undefined;
        const text = std.fmt.bufPrint(&frame, "{{\"error\":\"{s}\"}}", .{why.name}) catch unreachable;
        mm.ws.send(conn, .text, text) catch |err| if (err != error.NotFound) return err; // NotFound: it left
        return;
    };
    _ = try store(data);
    try mm.ws.publish(.text, data, .{});
}

/// GET /room/<name>/messages?since=N: the messages after seq N, oldest first.
fn list(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    const since = (queryInt(req.query, "since") catch return answer(res, 400, "bad_since")) orelse 0;
    const rows = try mm.sql.exec("SELECT id, at_ms, text FROM messages WHERE id > ? ORDER BY id LIMIT ?", &.{
        .{ .integer = since },
        .{ .integer = page_size },
    });
    try res.body.append("{\"messages\":[");
    for (0..rows.rows) |i| {
        if (i != 0) try res.body.appendByte(',');
        try res.body.print("{{\"seq\":{d},\"at\":{d},\"text\":", .{ rows.int(i, 0) orelse 0, rows.int(i, 1) orelse 0 });
        try res.body.appendJsonString(rows.text(i, 2) orelse "");
        try res.body.appendByte('}');
    }
    try res.body.append("]}");
}

/// Retention: deletes the expired messages and wakes up again while messages remain.
pub fn handleAlarm(scheduled_ms: u64, attempt: u32) !void {
    _ = scheduled_ms;
    _ = attempt;
    const now = mm.nowMs();
    _ = try mm.sql.exec("DELETE FROM messages WHERE at_ms <= ?", &.{.{ .integer = now - retention_ms }});
    const left = try mm.sql.exec("SELECT count(*) FROM messages", &.{});
    if ((left.int(0, 0) orelse 0) > 0) try mm.alarm.set(now + retention_ms);
}

/// The value of `name` in a query string as a non-negative integer, or null when it is absent.
fn queryInt(query: []const u8, name: []const u8) error{Invalid}!?i64 {
    var pairs = std.mem.splitScalar(u8, query, '&');
    while (pairs.next()) |pair| {
        const eq = std.mem.indexOfScalar(u8, pair, '=') orelse pair.len;
        if (!std.mem.eql(u8, pair[0..eq], name)) continue;
        const value = if (eq < pair.len) pair[eq + 1 ..] else "";
        if (value.len == 0) return error.Invalid;
        for (value) |c| if (!std.ascii.isDigit(c)) return error.Invalid;
        return std.fmt.parseInt(i64, value, 10) catch error.Invalid;
    }
    return null;
}

fn answer(res: *mm.HttpResponse, status: u16, error_name: []const u8) !void {
    res.status = status;
    try res.body.print("{{\"error\":\"{s}\"}}", .{error_name});
}

fn notAllowed(res: *mm.HttpResponse, allow: []const u8) !void {
    try res.header("allow", allow);
    return answer(res, 405, "method_not_allowed");
}
