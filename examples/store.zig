//! store: an in-memory key-value store (micromono example service, Zig).
//!
//! Kind CALL. Requests are text commands:
//!   `PUT <key>\n<value>`  stores value (any bytes) and replies `created` or `updated`
//!   `GET <key>`           replies the value
//!   `DEL <key>`           removes the key and replies `deleted`
//! Application errors (the caller sees MM_ERR_APP; the code is in the host's log and metrics):
//!   400  malformed command, or an empty key / a key with a newline
//!   404  no such key (GET, DEL)
//!   413  key over 1 KiB or value over 1 MiB
//!   507  the store holds max_entries keys already, or memory ran out (the SDK maps OutOfMemory to 507)
//!
//! State lives in this instance's memory, so run it with `instances = 1` in services.toml: with more instances
//! each would hold a different subset of the keys. Nothing is persisted; a restart or a trap starts empty.

const std = @import("std");
const mm = @import("micromono");

comptime {
    mm.service(@This());
}

const max_key_bytes = 1024;
const max_value_bytes = 1024 * 1024;
const max_entries = 10_000;

const err_bad_request = 400;
const err_not_found = 404;
const err_too_large = 413;
const err_full = 507;

/// Keys and values are owned by the map and allocated with `mm.allocator`.
var entries: std.StringHashMapUnmanaged([]u8) = .empty;

pub fn handleCall(req: []const u8, reply: *mm.Buf) !void {
    if (std.mem.startsWith(u8, req, "GET ")) {
        const key = try parseKey(req[4..]);
        try reply.append(entries.get(key) orelse return mm.fail(err_not_found));
    } else if (std.mem.startsWith(u8, req, "PUT ")) {
        const line_end = std.mem.indexOfScalar(u8, req, '\n') orelse return mm.fail(err_bad_request);
        const key = try parseKey(req[4..line_end]);
        const created = try put(key, req[line_end + 1 ..]);
        try reply.append(if (created) "created" else "updated");
    } else if (std.mem.startsWith(u8, req, "DEL ")) {
        const key = try parseKey(req[4..]);
        const removed = entries.fetchRemove(key) orelse return mm.fail(err_not_found);
        mm.allocator.free(removed.key);
        mm.allocator.free(removed.value);
        try reply.append("deleted");
    } else {
        return mm.fail(err_bad_request);
    }
}

fn parseKey(key: []const u8) error{Fail}![]const u8 {
    if (key.len == 0 or std.mem.indexOfScalar(u8, key, '\n') != null) return mm.fail(err_bad_request);
    if (key.len > max_key_bytes) return mm.fail(err_too_large);
    return key;
}

/// Stores a copy of `value` under `key`; true if the key is new. Either fully succeeds or changes nothing.
fn put(key: []const u8, value: []const u8) !bool {
    if (value.len > max_value_bytes) return mm.fail(err_too_large);
    const copy = try mm.allocator.dupe(u8, value);
    errdefer mm.allocator.free(copy);
    if (entries.getPtr(key)) |slot| {
        mm.allocator.free(slot.*);
        slot.* = copy;
        return false;
    }
    if (entries.count() >= max_entries) return mm.fail(err_full);
    const owned_key = try mm.allocator.dupe(u8, key);
    errdefer mm.allocator.free(owned_key);
    try entries.put(mm.allocator, owned_key, copy);
    return true;
}
