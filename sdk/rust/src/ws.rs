//! An actor's WebSocket connections (services with `websocket = true`, docs/abi.md "WebSockets", docs/stream.md).
//! The daemon holds them; the actor sees each as a u64 id, unique in the daemon's life, in [`Service::ws_open`],
//! [`Service::ws_message`] and [`Service::ws_close`], and answers with these functions, from any of its handlers
//! (an HTTP request may publish too).
//!
//! What they send leaves through the output gate: once the current request's writes are durable, and not at all
//! if the request fails (an `Err`, a trap, a refused open). So `Ok` means "queued with this request", not
//! "delivered". The data is copied during the call.
//!
//! [`Service::ws_open`]: crate::Service::ws_open
//! [`Service::ws_message`]: crate::Service::ws_message
//! [`Service::ws_close`]: crate::Service::ws_close

use crate::{codec, host, Result};

/// A message's type. Text is UTF-8 (the daemon closes a client whose text is not, with 1007).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Text = 1,
    Binary = 2,
}

/// The normal close code, for [`close`].
pub const CLOSE_NORMAL: u16 = 1000;
/// The code [`crate::Service::ws_close`] gets when the connection was lost.
pub const CLOSE_LOST: u16 = 1006;

/// Sends `data` as one message of `kind` to connection `conn` only, unnumbered and not kept for resuming: text
/// reaches the client as `{"data": "<the text>"}`, binary after 8 zero bytes (the sdk/ clients unwrap both).
/// [`crate::Error::NotFound`] when the connection is closed; [`crate::Error::Invalid`] for text that is not UTF-8.
pub fn send(conn: u64, kind: Type, data: &[u8]) -> Result<()> {
    codec::check(host::ws_send(conn, kind as i32, data)).map(|_| ())
}

/// [`send`] of a text message.
pub fn send_text(conn: u64, text: &str) -> Result<()> {
    send(conn, Type::Text, text.as_bytes())
}

/// Publishes `data` as one message of `kind` to every connection of this actor, or with a non-empty `tag` to
/// those tagged with it ([`tag`]). The daemon numbers it in the actor's stream and keeps it for clients that
/// resume: a text message reaches clients as `{"seq": N, "data": "<the text>"}`, so publish the payload itself,
/// not a JSON envelope. [`crate::Error::Invalid`] for text that is not UTF-8 or a tag over 64 bytes.
pub fn publish(kind: Type, data: &[u8], tag: &[u8]) -> Result<()> {
    codec::check(host::ws_publish(kind as i32, data, tag)).map(|_| ())
}

/// Closes connection `conn` with `code` ([`CLOSE_NORMAL`], or 3000 to 4999) and `reason` (at most 123 bytes).
/// [`crate::Service::ws_close`] follows for it later, as for any close.
pub fn close(conn: u64, code: u16, reason: &str) -> Result<()> {
    codec::check(host::ws_close(conn, code as i32, reason.as_bytes())).map(|_| ())
}

/// Adds `name` (1 to 64 bytes) to connection `conn`'s tags, for [`publish`]. They last as long as it does.
pub fn tag(conn: u64, name: &[u8]) -> Result<()> {
    codec::check(host::ws_tag(conn, name)).map(|_| ())
}
