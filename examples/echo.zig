//! echo: returns what it is sent (micromono example service, Zig; the same service as echo.c). Used by the
//! benchmarks (benches/bench_sdks.py compares the languages' echo services).
//!
//!   HTTP (route /echo)  200 with the request body; content-type copied from the request, else
//!                       application/octet-stream.
//!   CALL                replies the payload unchanged.
//!   MESSAGE             accepted and dropped.
//! Stateless: any number of instances.

const mm = @import("micromono");

comptime {
    mm.service(@This());
}

pub fn handleHttp(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    res.status = 200;
    try res.header("content-type", req.header("content-type") orelse "application/octet-stream");
    res.setBodyRef(req.body); // the request outlives the handler: no copy here
}

pub fn handleCall(req: []const u8, reply: *mm.Buf) !void {
    try reply.append(req);
}

pub fn handleMessage(msg: []const u8) void {
    _ = msg;
}
