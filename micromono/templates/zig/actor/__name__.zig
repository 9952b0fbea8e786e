//! {{name}}: a micromono actor in Zig (made by `micromono new --keyed`).
//!
//! An actor (`kind = "actor"` in services.toml): each key, the last segment of /{{name}}/<key>, has its own
//! instance and its own storage.
//!
//!   GET /{{name}}/<key>   counts a visit to <key>; 200, text/plain: `{{name}} <key>: <visits>`
//!   other methods        405 (with `allow: GET`)
//!
//! The count lives in the actor's key-value storage under "visits", read on every request: storage is the truth,
//! and the instance may be closed and revived at any time. The write commits when the handler returns; a storage
//! error fails the request (500, and a `guest.log` line naming the error).

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
    const visits = (try mm.kv.getInt("visits") orelse 0) + 1; // null: a new key
    try mm.kv.putInt("visits", visits);
    try res.header("content-type", "text/plain");
    try res.body.print("{{name}} {s}: {d}", .{ mm.actorKey() orelse "", visits });
}
