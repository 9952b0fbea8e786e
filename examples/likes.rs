//! likes: who likes what, one actor per name (micromono example actor, Rust).
//!
//! An actor (`kind = "actor"`, `websocket = true` in services.toml): each name (a note, a page, a room...) is a key
//! with its own instance and its own storage. Liking needs a user, resolved from a bearer token by `auth` (Zig),
//! so a user likes a name at most once.
//!
//!   GET    /likes/<name>   {"likes":N}                                      200
//!   PUT    /likes/<name>   like it as the token's user: {"likes":N,"liked":true}     200 (idempotent)
//!   DELETE /likes/<name>   unlike it: {"likes":N,"liked":false}                      200 (idempotent)
//!          no or unknown token: 401 {"error":"unauthorized"}; auth failing otherwise: 502
//!   other methods          405 (with `allow: GET, PUT, DELETE`)
//!   CALL "get"             the count, decimal (call("likes/<name>", "get")); other payloads: application error 400
//!   WebSocket /likes/<name>  the current {"likes":N} on connecting (to that client), then each new count as it
//!                          changes (published: numbered, resumable with ?since=)
//!
//! Storage (kv): "n" holds the count as decimal text, "user/<user>" marks a user's like (an empty value). A
//! request's writes commit together when it returns, so the count and the marks always agree.

use micromono::{kv, ws, Error, HttpRequest, HttpResponse, Result, Service};

#[derive(Default)]
struct Likes;

const COUNT: &[u8] = b"n";

fn count() -> Result<i64> {
    Ok(kv::get_i64(COUNT)?.unwrap_or(0))
}

fn json(res: &mut HttpResponse, status: u16, body: &str) -> Result<()> {
    res.status = status;
    res.header("content-type", "application/json")?;
    res.body.extend_from_slice(body.as_bytes());
    Ok(())
}

/// The user the request's `Authorization: Bearer <token>` names, asked of `auth`; `None` when there is no token or
/// auth does not know it (auth fails the call with an application error).
fn user_of(req: &HttpRequest) -> Result<Option<Vec<u8>>> {
    let token = match req.header("authorization").and_then(|v| v.strip_prefix(b"Bearer ")) {
        Some(token) if !token.is_empty() => token,
        _ => return Ok(None),
    };
    match micromono::call("auth", token) {
        Ok(user) => Ok(Some(user)),
        Err(Error::App) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Likes (`like`) or unlikes the name as `user`; the new count. Publishes it to the WebSocket clients when it
/// changed.
fn set_like(user: &[u8], like: bool) -> Result<i64> {
    let mut mark = b"user/".to_vec();
    mark.extend_from_slice(user);
    let had = kv::get(&mark)?.is_some();
    let mut n = count()?;
    if had == like {
        return Ok(n);
    }
    if like {
        kv::put(&mark, b"")?;
        n += 1;
    } else {
        kv::delete(&mark)?;
        n -= 1;
    }
    kv::put_i64(COUNT, n)?;
    ws::publish(ws::Type::Text, format!("{{\"likes\":{}}}", n).as_bytes(), b"")?;
    Ok(n)
}

impl Service for Likes {
    fn http<'r>(&mut self, req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {
        let like = match req.method {
            b"GET" => return json(res, 200, &format!("{{\"likes\":{}}}", count()?)),
            b"PUT" => true,
            b"DELETE" => false,
            _ => {
                res.header("allow", "GET, PUT, DELETE")?;
                return json(res, 405, "{\"error\":\"method_not_allowed\"}");
            }
        };
        let user = match user_of(req) {
            Ok(Some(user)) => user,
            Ok(None) => return json(res, 401, "{\"error\":\"unauthorized\"}"),
            Err(e) => {
                micromono::warn(format!("likes: auth failed: {}: {}", e, micromono::last_error()));
                return json(res, 502, "{\"error\":\"dependency_failed\",\"dependency\":\"auth\"}");
            }
        };
        let n = set_like(&user, like)?; // a storage failure: application error 500, logged, nothing written
        json(res, 200, &format!("{{\"likes\":{},\"liked\":{}}}", n, like))
    }

    fn call(&mut self, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        if req != b"get" {
            return Err(micromono::fail(400));
        }
        reply.extend_from_slice(count()?.to_string().as_bytes());
        Ok(())
    }

    fn ws_open(&mut self, conn: u64, _path: &[u8], _query: &[u8]) -> Result<()> {
        ws::send_text(conn, &format!("{{\"likes\":{}}}", count()?))
    }
}

micromono::service!(Likes);
