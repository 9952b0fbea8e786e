//! micromono: the Rust SDK for micromono services (guest ABI version 2, docs/abi.md).
//!
//! This crate owns the guest side of the ABI for Rust: the `mm_abi_version`, `mm_inbox` and `mm_handle` exports
//! (made by [`service!`]), the `micromono.*` host imports, request decoding and reply encoding. A service is a
//! type implementing [`Service`], whose methods are the handlers, and one line that exports it:
//!
//! ```ignore
//! use micromono::{HttpRequest, HttpResponse, Result, Service};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Service for Hello {
//!     fn http<'r>(&mut self, req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {   // kind HTTP
//!         res.header("content-type", "text/plain")?;
//!         res.body.extend_from_slice(b"hello ");
//!         res.body.extend_from_slice(req.path);
//!         Ok(())
//!     }
//!     fn call(&mut self, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {                     // kind CALL
//!         if req.is_empty() { return Err(micromono::fail(400)); }                               // app error 400
//!         reply.extend_from_slice(req);
//!         Ok(())
//!     }
//! }
//!
//! micromono::service!(Hello);
//! ```
//!
//! Every handler is optional (the trait has defaults): a request of a kind without one fails with application
//! error 501, except the WebSocket kinds (without a handler a connection is accepted and its messages and close are
//! ignored). A handler's `Err` becomes an application error: [`fail`]`(code)` gives that code; any other [`Error`]
//! (a host error from `call`, `kv`, `sql`, ... passed on with `?`) gives 500 and a `guest.log` line naming it, with
//! the host's [`last_error`] text. A panic traps: the request fails, the instance is replaced, and the panic's
//! message is logged first.
//!
//! Actors (a service declared `kind = "actor"`, docs/abi.md "Actors") also get durable per-key storage: [`kv`],
//! [`sql`] (an SQLite database of their own), [`alarm`] (one wake-up time, handled by [`Service::alarm`]) and a
//! storage schema version ([`Service::SCHEMA_VERSION`]) with its migration ([`Service::migrate`]). Every write of
//! one request (and of `migrate` before it) commits when the handler returns `Ok` and is rolled back when it
//! returns `Err` or traps. Memory is only a cache: an idle actor is closed and later revived from its storage.
//!
//! An actor with `websocket = true` has WebSocket clients ([`ws`], docs/stream.md): [`Service::ws_open`],
//! [`Service::ws_message`], [`Service::ws_close`], answered with [`ws::send`] and [`ws::publish`].
//!
//! Build (Debian 12's rustc 1.63 with `libstd-rust-dev-wasm32`; docs/lang-rust.md has the why and the cargo form):
//!
//! ```text
//! /usr/bin/rustc --edition 2021 --crate-type rlib --target wasm32-unknown-unknown -C opt-level=s \
//!     -C panic=abort -C target-feature=+bulk-memory --crate-name micromono -o libmicromono.rlib sdk/rust/src/lib.rs
//! /usr/bin/rustc --edition 2021 --crate-type cdylib --target wasm32-unknown-unknown -C opt-level=s -C lto \
//!     -C panic=abort -C target-feature=+bulk-memory -C strip=symbols -C link-arg=-zstack-size=65536 \
//!     --extern micromono=libmicromono.rlib -o svc.wasm svc.rs
//! ```
//!
//! Lifetimes. The request's slices point into the inbox and live until the handler returns (`'r`); so may an HTTP
//! response's [`HttpResponse::body_ref`]. Everything else the SDK hands out is owned (`Vec`, `String`). The service
//! value itself (made with `Default` on the first request) lives as long as the instance: keep in-memory state in
//! its fields (a stateful non-actor service runs with `instances = 1`). Handlers are never re-entered.
//!
//! Cost. The hot path allocates nothing once warm: the inbox, the CALL reply and the HTTP response buffers are
//! reused from request to request (they keep their capacity); [`call_into`] and [`kv::get_into`] reuse the
//! caller's buffer.

use std::fmt;

mod codec;
mod host;
mod http;
pub mod kv;
pub mod sql;
pub mod ws;

#[doc(hidden)]
pub mod __rt;

pub use http::{Header, Headers, HttpRequest, HttpResponse};

/// The guest ABI version this SDK implements (`mm_abi_version`).
pub const ABI_VERSION: i32 = 2;

/// Application error codes the SDK itself reports (a handler may use any code via [`fail`]). They follow HTTP so
/// that they read naturally in the host's messages.
pub mod app {
    /// The host sent a request that does not decode.
    pub const BAD_REQUEST: u32 = 400;
    /// A handler returned an error other than [`crate::fail`]'s.
    pub const INTERNAL: u32 = 500;
    /// No handler for this kind of request.
    pub const NOT_IMPLEMENTED: u32 = 501;
}

/// Why something failed: one of the host's `MM_ERR_*` codes (docs/abi.md "Error codes"), or [`Error::Fail`], an
/// application error this service reports itself. [`last_error`] gives the host's message for the host's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// -1: no service of that name is loaded.
    UnknownTarget,
    /// -2: the target is not in this service's `calls` allowlist.
    Forbidden,
    /// -3: no free instance, or the mailbox is full, or too many sends.
    Overloaded,
    /// -4: the callee trapped or broke the ABI.
    Trap,
    /// -5: the callee exceeded its deadline.
    Timeout,
    /// -6: the call chain is deeper than `max_call_depth`.
    Depth,
    /// -7: the callee returned an application error (its code is in [`last_error`]'s text).
    App,
    /// -8: the request does not fit the callee.
    TooLarge,
    /// -9: `take_reply` without a held reply (the SDK calls take_reply itself).
    NoReply,
    /// -10: the callee is stopping, removed or quarantined.
    Unavailable,
    /// -11: no such value, or no such WebSocket connection.
    NotFound,
    /// -12: the write would take the actor past its `storage_limit`; nothing was written.
    StorageFull,
    /// -13: the SQL statement failed or is not allowed ([`last_error`] has SQLite's message).
    Sql,
    /// -14: a storage, alarm or WebSocket function in a service that is not `kind = "actor"`.
    NotActor,
    /// -15: malformed arguments (a key or value over its bound, bad SQL parameters, a bad close code, ...).
    Invalid,
    /// A negative code this SDK does not know (a newer host).
    Unexpected(i32),
    /// The handler fails with this application error code (> 0): `return Err(micromono::fail(404))`. The
    /// caller sees [`Error::App`]; HTTP ingress answers 500 naming the code.
    Fail(u32),
}

/// The error a handler returns to fail its request with application error `code` (0 is taken as 500).
pub fn fail(code: u32) -> Error {
    Error::Fail(if code == 0 { app::INTERNAL } else { code })
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for a negative ABI code.
    pub fn from_code(code: i32) -> Error {
        match code {
            -1 => Error::UnknownTarget,
            -2 => Error::Forbidden,
            -3 => Error::Overloaded,
            -4 => Error::Trap,
            -5 => Error::Timeout,
            -6 => Error::Depth,
            -7 => Error::App,
            -8 => Error::TooLarge,
            -9 => Error::NoReply,
            -10 => Error::Unavailable,
            -11 => Error::NotFound,
            -12 => Error::StorageFull,
            -13 => Error::Sql,
            -14 => Error::NotActor,
            -15 => Error::Invalid,
            other => Error::Unexpected(other),
        }
    }

    /// The ABI's code (-1 to -15), the unexpected code itself, or for [`Error::Fail`] the application code.
    pub fn code(self) -> i32 {
        match self {
            Error::UnknownTarget => -1,
            Error::Forbidden => -2,
            Error::Overloaded => -3,
            Error::Trap => -4,
            Error::Timeout => -5,
            Error::Depth => -6,
            Error::App => -7,
            Error::TooLarge => -8,
            Error::NoReply => -9,
            Error::Unavailable => -10,
            Error::NotFound => -11,
            Error::StorageFull => -12,
            Error::Sql => -13,
            Error::NotActor => -14,
            Error::Invalid => -15,
            Error::Unexpected(code) => code,
            Error::Fail(code) => code.min(i32::MAX as u32) as i32,
        }
    }

    /// The C SDK's name of the code (`"MM_ERR_OVERLOADED"`), or `"application error"` for [`Error::Fail`].
    pub fn name(self) -> &'static str {
        match self {
            Error::UnknownTarget => "MM_ERR_UNKNOWN_TARGET",
            Error::Forbidden => "MM_ERR_FORBIDDEN",
            Error::Overloaded => "MM_ERR_OVERLOADED",
            Error::Trap => "MM_ERR_TRAP",
            Error::Timeout => "MM_ERR_TIMEOUT",
            Error::Depth => "MM_ERR_DEPTH",
            Error::App => "MM_ERR_APP",
            Error::TooLarge => "MM_ERR_TOO_LARGE",
            Error::NoReply => "MM_ERR_NO_REPLY",
            Error::Unavailable => "MM_ERR_UNAVAILABLE",
            Error::NotFound => "MM_ERR_NOT_FOUND",
            Error::StorageFull => "MM_ERR_STORAGE_FULL",
            Error::Sql => "MM_ERR_SQL",
            Error::NotActor => "MM_ERR_NOT_ACTOR",
            Error::Invalid => "MM_ERR_INVALID",
            Error::Unexpected(_) => "unexpected error code",
            Error::Fail(_) => "application error",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for Error {}

/// A service: its handlers, one per kind of request (docs/abi.md "Kinds of request"). Every method has a default,
/// so implement only those the service needs. [`service!`] exports the ABI for it; the value is made with
/// `Default` before the first request and lives as long as the instance.
///
/// Each handler returns `Ok(())`, or `Err`: [`fail`]`(code)` for an application error of its own, or the
/// [`Error`] of a failed host function (logged, then application error 500). For an actor, `Err` also rolls back
/// everything the request wrote and drops what it sent.
pub trait Service: Default + 'static {
    /// The storage schema version this build expects (actors; exported as `mm_schema_version`). When an actor's
    /// stored version is lower, [`Service::migrate`] runs before its first request with this build.
    const SCHEMA_VERSION: i32 = 0;

    /// Kind HTTP: a request on one of the service's routes. `res` starts as 200 with no headers and no body.
    fn http<'r>(&mut self, req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {
        let _ = (req, res);
        Err(Error::Fail(app::NOT_IMPLEMENTED))
    }

    /// Kind CALL: another service's `call`. Append the reply to `reply` (empty, SDK-owned, reused).
    fn call(&mut self, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        let _ = (req, reply);
        Err(Error::Fail(app::NOT_IMPLEMENTED))
    }

    /// Kind MESSAGE: another service's `send`. Its result only counts toward the service's failed messages.
    fn message(&mut self, msg: &[u8]) -> Result<()> {
        let _ = msg;
        Err(Error::Fail(app::NOT_IMPLEMENTED))
    }

    /// Kind ALARM (actors): the alarm set for `scheduled_ms` is due; `attempt` is 1 the first time. `Err` rolls it
    /// back and has it retried with backoff (up to 10 attempts). It is cleared on `Ok`, unless it set a new one.
    fn alarm(&mut self, scheduled_ms: u64, attempt: u32) -> Result<()> {
        let _ = (scheduled_ms, attempt);
        Err(Error::Fail(app::NOT_IMPLEMENTED))
    }

    /// Actors: converts storage written by schema version `from` (0 for a new actor) to
    /// [`Service::SCHEMA_VERSION`], in the transaction of the request that follows. `Err` fails that request and
    /// leaves the version as it was.
    fn migrate(&mut self, from: i32) -> Result<()> {
        let _ = from;
        Ok(())
    }

    /// Kind WS_OPEN: client `conn` connected on `path` (raw, starts with '/') with `query` (no '?', and no
    /// `since`, which the daemon handles). `Ok` accepts it; `Err` refuses it (the client is closed with 1008).
    fn ws_open(&mut self, conn: u64, path: &[u8], query: &[u8]) -> Result<()> {
        let _ = (conn, path, query);
        Ok(())
    }

    /// Kind WS_MESSAGE: client `conn` sent `data` (text is UTF-8, checked by the daemon).
    fn ws_message(&mut self, conn: u64, kind: ws::Type, data: &[u8]) -> Result<()> {
        let _ = (conn, kind, data);
        Ok(())
    }

    /// Kind WS_CLOSE: connection `conn` is gone, closed with `code` ([`ws::CLOSE_LOST`] when it was lost).
    fn ws_close(&mut self, conn: u64, code: u16, reason: &[u8]) -> Result<()> {
        let _ = (conn, code, reason);
        Ok(())
    }
}

/// Exports the ABI (`mm_abi_version`, `mm_inbox`, `mm_handle`, `mm_schema_version`, `mm_migrate`) for a type
/// implementing [`Service`]: `micromono::service!(Counter);`, once, in the crate built as the `cdylib`.
#[macro_export]
macro_rules! service {
    ($service:ty) => {
        static mut __MICROMONO_SERVICE: ::core::option::Option<$service> = ::core::option::Option::None;

        #[no_mangle]
        pub extern "C" fn mm_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn mm_inbox(size: i32) -> i32 {
            $crate::__rt::inbox(size)
        }

        #[no_mangle]
        pub extern "C" fn mm_handle(kind: i32, len: i32) -> i64 {
            // Safety: the instance is single-threaded and the host never re-enters it, so this is the only
            // reference to the service while the handler runs.
            $crate::__rt::handle::<$service>(unsafe { &mut *::core::ptr::addr_of_mut!(__MICROMONO_SERVICE) }, kind, len)
        }

        #[no_mangle]
        pub extern "C" fn mm_schema_version() -> i32 {
            <$service as $crate::Service>::SCHEMA_VERSION
        }

        #[no_mangle]
        pub extern "C" fn mm_migrate(from: i32) -> i32 {
            // Safety: as in mm_handle.
            $crate::__rt::migrate::<$service>(unsafe { &mut *::core::ptr::addr_of_mut!(__MICROMONO_SERVICE) }, from)
        }
    };
}

// -------------------------------------------------------------------------------------------------------------
// Calls, messages, logging
// -------------------------------------------------------------------------------------------------------------

/// Calls service `target` (which must be in this service's `calls` allowlist; an actor is `"<service>/<key>"`)
/// with `req` and waits for its reply, of any size.
pub fn call(target: &str, req: &[u8]) -> Result<Vec<u8>> {
    let mut reply = Vec::new();
    call_into(target, req, &mut reply)?;
    Ok(reply)
}

/// [`call`] into a buffer of the caller's: `reply` is replaced by the reply. The buffer's capacity is lent to the
/// host, so a reused buffer makes a call that allocates nothing.
pub fn call_into(target: &str, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {
    let target = target.as_bytes();
    codec::fetch_into(reply, 1024, |ptr, cap| host::call(target, req, ptr, cap))
}

/// Queues `msg` for `target` (allowlisted as for [`call`]), which handles it later as kind MESSAGE. Failures after
/// queueing are never reported back; [`Error::Overloaded`] means its mailbox is full.
pub fn send(target: &str, msg: &[u8]) -> Result<()> {
    codec::check(host::send(target.as_bytes(), msg)).map(|_| ())
}

/// The message of the host's last failed `call`, `send`, storage, SQL, alarm or WebSocket function in this
/// instance (empty if none), or the SDK's own when it refused an argument itself. Invalid UTF-8 is replaced.
pub fn last_error() -> String {
    if let Some(own) = __rt::local_error() {
        return own.to_string();
    }
    let mut buf = vec![0u8; 512];
    let n = host::last_error(&mut buf);
    if n > buf.len() {
        buf.resize(n, 0);
        let m = host::last_error(&mut buf);
        buf.truncate(m.min(n));
    } else {
        buf.truncate(n);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A log line's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// Writes one structured log line (event `guest.log`, with the service's name and version). The host cuts it at
/// 4096 bytes, replaces invalid UTF-8, and rate-limits each service (`log_rate`). Format with `format!`:
/// `micromono::log(Level::Info, format!("{} votes", n))`.
pub fn log(level: Level, msg: impl AsRef<[u8]>) {
    host::log(level as i32, msg.as_ref());
}

/// [`log`] at [`Level::Info`].
pub fn info(msg: impl AsRef<[u8]>) {
    log(Level::Info, msg);
}

/// [`log`] at [`Level::Warn`].
pub fn warn(msg: impl AsRef<[u8]>) {
    log(Level::Warn, msg);
}

/// [`log`] at [`Level::Error`].
pub fn error(msg: impl AsRef<[u8]>) {
    log(Level::Error, msg);
}

/// The length of a W3C traceparent value, `00-<trace id>-<span id>-<flags>`.
pub const TRACEPARENT_LEN: usize = 55;

/// The current request's trace context (docs/tracing.md) as a W3C traceparent value: the trace id and the span the
/// daemon opened for this request, call or message. `None` when the daemon's tracing is off (an incoming HTTP
/// request's own `traceparent` header is still in its headers). A service that never calls it does not import
/// `micromono.trace_context`.
pub fn trace_context() -> Option<String> {
    let mut buf = vec![0u8; TRACEPARENT_LEN];
    if host::trace_context(&mut buf) != TRACEPARENT_LEN as i32 {
        return None;
    }
    String::from_utf8(buf).ok()
}

/// This actor's key (from its route `/counter/{key}` or its caller's target `"counter/<key>"`), or `None` when the
/// service is not an actor.
pub fn actor_key() -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 512]; // keys are 1 to 512 bytes
    let n = host::actor_key(&mut buf);
    if n < 0 {
        return None;
    }
    buf.truncate((n as usize).min(512));
    Some(buf)
}

/// The wall clock in milliseconds since the Unix epoch (WASI `clock_time_get`, realtime), for alarm times.
pub fn now_ms() -> i64 {
    (host::clock_realtime_ns() / 1_000_000) as i64
}

/// The actor's alarm: at most one, a wall-clock time in milliseconds since the Unix epoch, usually [`now_ms`]
/// plus a delay (a time in the past fires at once). When it is due the actor gets [`Service::alarm`]. Setting and
/// clearing it are part of the request's transaction.
pub mod alarm {
    use crate::{codec, host, Error, Result};

    /// Sets (replaces) the alarm.
    pub fn set(at_ms: i64) -> Result<()> {
        codec::check(host::alarm_set(at_ms)).map(|_| ())
    }

    /// The alarm's time, or `None` when none is set.
    pub fn get() -> Result<Option<i64>> {
        match host::alarm_get() {
            -1 => Ok(None),
            at if at >= 0 => Ok(Some(at)),
            code => Err(Error::from_code(code as i32)),
        }
    }

    /// Clears the alarm.
    pub fn delete() -> Result<()> {
        codec::check(host::alarm_delete()).map(|_| ())
    }
}
