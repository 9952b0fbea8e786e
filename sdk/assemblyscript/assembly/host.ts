// host.ts: the host imports of docs/abi.md, and nothing else. Every import of the SDK is declared here, in module
// `micromono` (plus WASI's clock, which the daemon links for every module), so that a service never imports from
// `env`: build with `--use abort=` (see README.md), or AssemblyScript imports `env.abort` and the module fails to load.
//
// AssemblyScript emits an import only when something calls it, so a service pays for the ones it uses.

@external("micromono", "call")
export declare function call(target: usize, targetLen: i32, req: usize, reqLen: i32, reply: usize, replyCap: i32): i32;
@external("micromono", "take_reply")
export declare function take_reply(ptr: usize, cap: i32): i32;
@external("micromono", "send")
export declare function send(target: usize, targetLen: i32, msg: usize, msgLen: i32): i32;
@external("micromono", "log")
export declare function log(level: i32, msg: usize, msgLen: i32): void;
@external("micromono", "last_error")
export declare function last_error(ptr: usize, cap: i32): i32;
// Optional (docs/abi.md): imported only by a module that calls traceContext().
@external("micromono", "trace_context")
export declare function trace_context(ptr: usize, cap: i32): i32;

// Actors (docs/abi.md "Actors").
@external("micromono", "actor_key")
export declare function actor_key(ptr: usize, cap: i32): i32;
@external("micromono", "kv_get")
export declare function kv_get(key: usize, keyLen: i32, buf: usize, bufCap: i32): i32;
@external("micromono", "kv_put")
export declare function kv_put(key: usize, keyLen: i32, val: usize, valLen: i32): i32;
@external("micromono", "kv_delete")
export declare function kv_delete(key: usize, keyLen: i32): i32;
@external("micromono", "kv_list")
export declare function kv_list(opts: usize, optsLen: i32, buf: usize, bufCap: i32): i32;
@external("micromono", "sql_exec")
export declare function sql_exec(
  sql: usize, sqlLen: i32, params: usize, paramsLen: i32, buf: usize, bufCap: i32,
): i32;
@external("micromono", "alarm_set")
export declare function alarm_set(atMs: i64): i32;
@external("micromono", "alarm_get")
export declare function alarm_get(): i64;
@external("micromono", "alarm_delete")
export declare function alarm_delete(): i32;

// WebSockets (docs/abi.md "WebSockets").
@external("micromono", "ws_send")
export declare function ws_send(conn: i64, type: i32, ptr: usize, len: i32): i32;
@external("micromono", "ws_publish")
export declare function ws_publish(type: i32, ptr: usize, len: i32, tag: usize, tagLen: i32): i32;
@external("micromono", "ws_close")
export declare function ws_close(conn: i64, code: i32, reason: usize, reasonLen: i32): i32;
@external("micromono", "ws_tag")
export declare function ws_tag(conn: i64, tag: usize, tagLen: i32): i32;

// WASI's realtime clock, for nowMs(). AssemblyScript's Date.now() would import `env.Date.now` instead.
@external("wasi_snapshot_preview1", "clock_time_get")
export declare function clock_time_get(id: u32, precision: u64, time: usize): u16;
