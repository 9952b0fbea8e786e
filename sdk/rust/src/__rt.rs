//! The runtime behind [`crate::service!`]'s exports: the inbox, the dispatch of kinds to a [`Service`]'s
//! handlers, reply encoding and the per-request reset. Not for services to call.
//!
//! The SDK's buffers are `static mut`s: a wasm32 instance runs one thread and the host never re-enters it
//! (docs/abi.md "Resources and limits"), so each is borrowed by one entry at a time.

use crate::codec::Reader;
use crate::http::{HttpRequest, HttpResponse};
use crate::{app, log, ws, Error, Level, Service};

static mut INBOX: Vec<u8> = Vec::new();
static mut CALL_REPLY: Vec<u8> = Vec::new();
static mut HTTP_HEAD: Vec<u8> = Vec::new();
static mut HTTP_BODY: Vec<u8> = Vec::new();
static mut LOCAL_ERROR: Option<&'static str> = None;
static mut PANIC_HOOK: bool = false;

const KIND_HTTP: i32 = 1;
const KIND_CALL: i32 = 2;
const KIND_MESSAGE: i32 = 3;
const KIND_ALARM: i32 = 4;
const KIND_WS_OPEN: i32 = 5;
const KIND_WS_MESSAGE: i32 = 6;
const KIND_WS_CLOSE: i32 = 7;

/// Records an error the SDK detected itself, which [`crate::last_error`] then reports (the host knows nothing of
/// it). Cleared when the guest is next entered.
pub fn set_local_error(message: &'static str) {
    unsafe { LOCAL_ERROR = Some(message) }
}

pub fn local_error() -> Option<&'static str> {
    unsafe { LOCAL_ERROR }
}

/// `mm_inbox`: a buffer of at least `size` bytes for the host's next request, or 0. The first call (right after
/// instantiation) also installs the panic hook.
pub fn inbox(size: i32) -> i32 {
    unsafe {
        if !PANIC_HOOK {
            PANIC_HOOK = true;
            std::panic::set_hook(Box::new(|info| {
                // Logged before the trap, which the host reports without the message.
                log(Level::Error, format!("micromono: {}", info));
            }));
        }
        let inbox = &mut *std::ptr::addr_of_mut!(INBOX);
        let want = size as u32 as usize; // the host treats sizes as unsigned
        if want > inbox.len() || inbox.is_empty() {
            // Allocate before dropping: if this fails, the old inbox stays valid (docs/abi.md, inbox protocol).
            let mut fresh = Vec::new();
            if fresh.try_reserve_exact(want.max(1)).is_err() {
                return 0;
            }
            fresh.resize(want.max(1), 0);
            *inbox = fresh;
        }
        inbox.as_mut_ptr() as i32
    }
}

/// Packs a reply for the host: (ptr << 32) | len. Replies must start below 2 GiB (bit 63 is the sign).
fn reply_of(bytes: &[u8]) -> i64 {
    let ptr = bytes.as_ptr() as usize as u64;
    if ptr >= 0x8000_0000 {
        return -(app::INTERNAL as i64);
    }
    ((ptr as i64) << 32) | bytes.len() as i64
}

/// The negative i64 `mm_handle` returns for a failed handler. A host error is logged with the host's message,
/// since the caller will only see the code.
fn failure(err: Error) -> i64 {
    match err {
        Error::Fail(code) => -(code.max(1) as i64),
        other => {
            log(
                Level::Error,
                &format!("micromono: the handler failed with {}: {}", other, crate::last_error()),
            );
            -(app::INTERNAL as i64)
        }
    }
}

fn bad_request(what: &str) -> i64 {
    log(Level::Error, format!("micromono: the {} request from the host does not decode", what));
    -(app::BAD_REQUEST as i64)
}

fn done(result: crate::Result<()>) -> i64 {
    match result {
        Ok(()) => 0,
        Err(e) => failure(e),
    }
}

/// `mm_handle`: decodes the request of `len` bytes in the inbox and runs the handler for `kind`.
pub fn handle<S: Service>(slot: &mut Option<S>, kind: i32, len: i32) -> i64 {
    unsafe { LOCAL_ERROR = None };
    let service = match slot {
        Some(service) => service,
        None => slot.insert(S::default()),
    };
    let inbox = unsafe { &*std::ptr::addr_of!(INBOX) };
    let n = len as u32 as usize;
    if n > inbox.len() {
        return -(app::BAD_REQUEST as i64);
    }
    let req = &inbox[..n];
    match kind {
        KIND_HTTP => {
            let decoded = match HttpRequest::decode(req) {
                Some(decoded) => decoded,
                None => return bad_request("HTTP"),
            };
            let (head, body) = unsafe { (&mut *std::ptr::addr_of_mut!(HTTP_HEAD), &mut *std::ptr::addr_of_mut!(HTTP_BODY)) };
            let mut res = HttpResponse::new(head, body);
            match service.http(&decoded, &mut res) {
                Ok(()) => reply_of(res.finish()),
                Err(e) => failure(e),
            }
        }
        KIND_CALL => {
            let reply = unsafe { &mut *std::ptr::addr_of_mut!(CALL_REPLY) };
            reply.clear();
            match service.call(req, reply) {
                Ok(()) => reply_of(reply),
                Err(e) => failure(e),
            }
        }
        KIND_MESSAGE => done(service.message(req)),
        KIND_ALARM => {
            let mut r = Reader::new(req); // u64 scheduled_ms, u32 attempt
            match (r.u64(), r.u32()) {
                (Some(at), Some(attempt)) => done(service.alarm(at, attempt)),
                _ => bad_request("alarm"),
            }
        }
        KIND_WS_OPEN => {
            let mut r = Reader::new(req); // u64 conn, u32 path_len, u32 query_len, path, query
            let open = (|| {
                let conn = r.u64()?;
                let (path_len, query_len) = (r.u32()? as usize, r.u32()? as usize);
                Some((conn, r.take(path_len)?, r.take(query_len)?))
            })();
            match open {
                Some((conn, path, query)) => done(service.ws_open(conn, path, query)),
                None => bad_request("WebSocket"),
            }
        }
        KIND_WS_MESSAGE | KIND_WS_CLOSE => {
            let mut r = Reader::new(req); // u64 conn, u32 type or code, the rest
            let (conn, word) = match (r.u64(), r.u32()) {
                (Some(conn), Some(word)) => (conn, word),
                _ => return bad_request("WebSocket"),
            };
            if kind == KIND_WS_CLOSE {
                return match u16::try_from(word) {
                    Ok(code) => done(service.ws_close(conn, code, r.rest)), // RFC 6455: 16 bits
                    Err(_) => bad_request("WebSocket"),
                };
            }
            match word {
                1 => done(service.ws_message(conn, ws::Type::Text, r.rest)),
                2 => done(service.ws_message(conn, ws::Type::Binary, r.rest)),
                _ => bad_request("WebSocket"),
            }
        }
        // A kind from a newer ABI: docs/abi.md lets the guest reject it with an error.
        _ => -(app::NOT_IMPLEMENTED as i64),
    }
}

/// `mm_migrate`: 0 when the service's migration succeeded, its (positive) application error code otherwise.
pub fn migrate<S: Service>(slot: &mut Option<S>, from: i32) -> i32 {
    unsafe { LOCAL_ERROR = None };
    let service = match slot {
        Some(service) => service,
        None => slot.insert(S::default()),
    };
    match service.migrate(from) {
        Ok(()) => 0,
        Err(e) => (-failure(e)).min(i32::MAX as i64) as i32,
    }
}
