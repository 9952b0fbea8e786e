//! {{name}}: a micromono service in Zig (made by `micromono new`).
//!
//!   GET /{{name}}, or any path below it   200, text/plain: `hello from {{name}}`
//!   other methods                        405 (with `allow: GET`)
//!
//! micromono.zig lists the other handlers a service may declare: `handleCall` for calls from other services
//! (`mm.call`), `handleMessage` for their messages (`mm.send`).

const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

pub fn handleHttp(req: *const mm.HttpRequest, res: *mm.HttpResponse) !void {
    if (!std.mem.eql(u8, req.method, "GET")) {
        res.status = 405;
        try res.header("allow", "GET");
        return;
    }
    try res.header("content-type", "text/plain");
    try res.body.append("hello from {{name}}");
}
