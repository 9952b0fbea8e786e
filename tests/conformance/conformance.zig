//! conformance: the SDK conformance service in Zig (tests/conformance/README.md is its specification; the same
//! service exists in C, Rust and AssemblyScript, and tests/test_conformance.py expects the same answers from each).
//!
//! An actor with WebSockets: routes /conf/{key} and /conf/{key}/*, calls = ["peer", "conformance"].

const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

const lang = "zig";

pub fn handleHttp(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    // The path is /conf/<key>/<what>: skip the key, whatever it holds. An answer with an empty body gets no
    // content-type (the README's last rule), so only echo sets one.
    res.status = 404;
    if (!std.mem.startsWith(u8, req.path, "/conf/")) return;
    const after = req.path["/conf/".len..];
    const what = after[(std.mem.indexOfScalar(u8, after, '/') orelse after.len)..];

    const post = std.mem.eql(u8, req.method, "POST");
    if (post and std.mem.eql(u8, what, "/echo")) return echo(req, res);
    if (post and std.mem.eql(u8, what, "/call")) return callPeer(req, res);
    if (post and std.mem.eql(u8, what, "/send")) return sendSelf(req, res);
    if (post and std.mem.eql(u8, what, "/trap")) @trap();
    if (post and std.mem.eql(u8, what, "/log")) {
        mm.log(.info, "{s}", .{req.body});
        res.status = 204;
        return;
    }
    if (std.mem.startsWith(u8, what, "/kv/") and what.len > "/kv/".len) return kv(req, res, what["/kv/".len..]);
}

fn echo(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    res.status = 200;
    if (req.body.len != 0) try res.header("content-type", req.header("content-type") orelse "application/octet-stream");
    try res.header("x-conformance", lang);
    res.setBodyRef(req.body);
}

fn failed(res: *mm.HttpResponse, what: []const u8, err: anyerror) !void {
    res.status = 502;
    try res.body.print("{s} failed: {d}", .{ what, mm.errorCode(err) });
}

fn callPeer(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    const reply = mm.call("peer", req.body) catch |err| return failed(res, "call", err);
    res.status = 200;
    res.setBodyRef(reply);
}

fn sendSelf(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    const target = try std.fmt.allocPrint(mm.arena(), "conformance/{s}", .{mm.actorKey() orelse ""});
    mm.send(target, req.body) catch |err| return failed(res, "send", err);
    res.status = 202;
}

fn kv(req: *const mm.HttpRequest, res: *mm.HttpResponse, name: []const u8) !void {
    if (std.mem.eql(u8, req.method, "PUT")) {
        try mm.kv.put(name, req.body);
        res.status = 204;
    } else if (std.mem.eql(u8, req.method, "GET")) {
        const value = try mm.kv.get(name) orelse return; // 404
        res.status = 200;
        res.setBodyRef(value);
    } else if (std.mem.eql(u8, req.method, "DELETE")) {
        res.status = if (try mm.kv.delete(name)) 204 else 404;
    }
}

pub fn handleCall(req: []const u8, reply: *mm.Buf) !void {
    try reply.append(req);
}

pub fn handleMessage(msg: []const u8) !void {
    try mm.kv.put("sent", msg);
}

// No handleWsOpen or handleWsClose: without them the SDK accepts every connection and ignores its close.
pub fn handleWsMessage(conn: u64, kind: mm.ws.Type, data: []const u8) !void {
    if (kind == .text) {
        mm.ws.send(conn, .text, data) catch {};
        mm.ws.publish(.text, data, .{}) catch {};
    } else {
        mm.ws.send(conn, .binary, data) catch {};
    }
}
