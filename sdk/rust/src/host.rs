//! The host imports (module `micromono`, docs/abi.md "Host imports") behind slice-taking wrappers: the only place
//! with the ABI's raw pointers besides `__rt`'s exports. Every length is passed as the ABI's i32; a slice over
//! 2 GiB cannot exist in a wasm32 memory the host accepts, so the casts do not truncate.
//!
//! Off wasm (host-side `cargo test` of the pure parts) the imports are stubs that panic.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "micromono")]
    extern "C" {
        pub fn call(t: *const u8, tl: i32, r: *const u8, rl: i32, out: *mut u8, cap: i32) -> i32;
        pub fn take_reply(ptr: *mut u8, cap: i32) -> i32;
        pub fn send(t: *const u8, tl: i32, m: *const u8, ml: i32) -> i32;
        pub fn log(level: i32, m: *const u8, ml: i32);
        pub fn last_error(ptr: *mut u8, cap: i32) -> i32;
        // Optional (docs/abi.md): imported only by a module that calls `trace_context()`.
        pub fn trace_context(ptr: *mut u8, cap: i32) -> i32;
        pub fn actor_key(ptr: *mut u8, cap: i32) -> i32;
        pub fn kv_get(k: *const u8, kl: i32, out: *mut u8, cap: i32) -> i32;
        pub fn kv_put(k: *const u8, kl: i32, v: *const u8, vl: i32) -> i32;
        pub fn kv_delete(k: *const u8, kl: i32) -> i32;
        pub fn kv_list(o: *const u8, ol: i32, out: *mut u8, cap: i32) -> i32;
        pub fn sql_exec(s: *const u8, sl: i32, p: *const u8, pl: i32, out: *mut u8, cap: i32) -> i32;
        pub fn alarm_set(at_ms: i64) -> i32;
        pub fn alarm_get() -> i64;
        pub fn alarm_delete() -> i32;
        pub fn ws_send(conn: i64, kind: i32, p: *const u8, l: i32) -> i32;
        pub fn ws_publish(kind: i32, p: *const u8, l: i32, t: *const u8, tl: i32) -> i32;
        pub fn ws_close(conn: i64, code: i32, r: *const u8, rl: i32) -> i32;
        pub fn ws_tag(conn: i64, t: *const u8, tl: i32) -> i32;
    }

    // WASI, declared by hand so that the target can stay wasm32-unknown-unknown (the daemon links WASI for every
    // module).
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn clock_time_get(clock_id: u32, precision: u64, time: *mut u64) -> u16;
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod imports {
    fn stub() -> ! {
        panic!("micromono: host imports exist only in a wasm32 guest")
    }
    pub unsafe fn call(_: *const u8, _: i32, _: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn take_reply(_: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn send(_: *const u8, _: i32, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn log(_: i32, _: *const u8, _: i32) {
        stub()
    }
    pub unsafe fn last_error(_: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn trace_context(_: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn actor_key(_: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn kv_get(_: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn kv_put(_: *const u8, _: i32, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn kv_delete(_: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn kv_list(_: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn sql_exec(_: *const u8, _: i32, _: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn alarm_set(_: i64) -> i32 {
        stub()
    }
    pub unsafe fn alarm_get() -> i64 {
        stub()
    }
    pub unsafe fn alarm_delete() -> i32 {
        stub()
    }
    pub unsafe fn ws_send(_: i64, _: i32, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn ws_publish(_: i32, _: *const u8, _: i32, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn ws_close(_: i64, _: i32, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn ws_tag(_: i64, _: *const u8, _: i32) -> i32 {
        stub()
    }
    pub unsafe fn clock_time_get(_: u32, _: u64, _: *mut u64) -> u16 {
        stub()
    }
}

fn len(bytes: &[u8]) -> i32 {
    bytes.len() as i32
}

// Functions that write into a lent buffer take (ptr, cap) from codec::fetch_into, which owns that buffer.

pub fn call(target: &[u8], req: &[u8], out: *mut u8, cap: i32) -> i32 {
    unsafe { imports::call(target.as_ptr(), len(target), req.as_ptr(), len(req), out, cap) }
}

pub fn take_reply(out: *mut u8, cap: i32) -> i32 {
    unsafe { imports::take_reply(out, cap) }
}

pub fn send(target: &[u8], msg: &[u8]) -> i32 {
    unsafe { imports::send(target.as_ptr(), len(target), msg.as_ptr(), len(msg)) }
}

pub fn log(level: i32, msg: &[u8]) {
    unsafe { imports::log(level, msg.as_ptr(), len(msg)) }
}

/// The full length of the last error's message; copies what fits into `buf`.
pub fn last_error(buf: &mut [u8]) -> usize {
    let n = unsafe { imports::last_error(buf.as_mut_ptr(), len(buf)) };
    n.max(0) as usize
}

/// The trace context's length (55, or 0 when there is none); written to `buf` only when it fits.
pub fn trace_context(buf: &mut [u8]) -> i32 {
    unsafe { imports::trace_context(buf.as_mut_ptr(), len(buf)) }
}

pub fn actor_key(buf: &mut [u8]) -> i32 {
    unsafe { imports::actor_key(buf.as_mut_ptr(), len(buf)) }
}

pub fn kv_get(key: &[u8], out: *mut u8, cap: i32) -> i32 {
    unsafe { imports::kv_get(key.as_ptr(), len(key), out, cap) }
}

pub fn kv_put(key: &[u8], value: &[u8]) -> i32 {
    unsafe { imports::kv_put(key.as_ptr(), len(key), value.as_ptr(), len(value)) }
}

pub fn kv_delete(key: &[u8]) -> i32 {
    unsafe { imports::kv_delete(key.as_ptr(), len(key)) }
}

pub fn kv_list(opts: &[u8], out: *mut u8, cap: i32) -> i32 {
    unsafe { imports::kv_list(opts.as_ptr(), len(opts), out, cap) }
}

pub fn sql_exec(sql: &[u8], params: &[u8], out: *mut u8, cap: i32) -> i32 {
    unsafe { imports::sql_exec(sql.as_ptr(), len(sql), params.as_ptr(), len(params), out, cap) }
}

pub fn alarm_set(at_ms: i64) -> i32 {
    unsafe { imports::alarm_set(at_ms) }
}

pub fn alarm_get() -> i64 {
    unsafe { imports::alarm_get() }
}

pub fn alarm_delete() -> i32 {
    unsafe { imports::alarm_delete() }
}

pub fn ws_send(conn: u64, kind: i32, data: &[u8]) -> i32 {
    unsafe { imports::ws_send(conn as i64, kind, data.as_ptr(), len(data)) }
}

pub fn ws_publish(kind: i32, data: &[u8], tag: &[u8]) -> i32 {
    unsafe { imports::ws_publish(kind, data.as_ptr(), len(data), tag.as_ptr(), len(tag)) }
}

pub fn ws_close(conn: u64, code: i32, reason: &[u8]) -> i32 {
    unsafe { imports::ws_close(conn as i64, code, reason.as_ptr(), len(reason)) }
}

pub fn ws_tag(conn: u64, tag: &[u8]) -> i32 {
    unsafe { imports::ws_tag(conn as i64, tag.as_ptr(), len(tag)) }
}

/// WASI's realtime clock in nanoseconds (0 if the host refuses, which the daemon does not).
pub fn clock_realtime_ns() -> u64 {
    let mut t: u64 = 0;
    let errno = unsafe { imports::clock_time_get(0, 1_000_000, &mut t) };
    if errno == 0 {
        t
    } else {
        0
    }
}
