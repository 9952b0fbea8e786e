//! auth: turns a bearer token into a user name (micromono example service, Zig).
//!
//! Kind CALL only. The request payload is the token; the reply is the user name. Application errors:
//!   400  empty token
//!   401  unknown token
//! The token table is compiled in: this example is about service-to-service calls, not identity management.
//! Stateless, so it can run with several instances.

const mm = @import("micromono");

comptime {
    mm.service(@This());
}

const Account = struct { token: []const u8, user: []const u8 };

const accounts = [_]Account{
    .{ .token = "alice-secret", .user = "alice" },
    .{ .token = "bob-secret", .user = "bob" },
};

pub fn handleCall(token: []const u8, reply: *mm.Buf) !void {
    if (token.len == 0) return mm.fail(400);
    // Check every account, comparing in constant time, so the response time says nothing about the token.
    var found: ?[]const u8 = null;
    for (accounts) |account| {
        if (constantTimeEql(account.token, token)) found = account.user;
    }
    try reply.append(found orelse return mm.fail(401));
}

/// Equality whose running time depends only on the lengths, not on where the first difference is.
fn constantTimeEql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    var diff: u8 = 0;
    for (a, b) |x, y| diff |= x ^ y;
    return diff == 0;
}
