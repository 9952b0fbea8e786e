//! {{name}}: a micromono actor in Rust (made by `micromono new --keyed`).
//!
//! An actor (`kind = "actor"` in services.toml): each key, the last segment of /{{name}}/<key>, has its own
//! instance and its own storage.
//!
//!   GET /{{name}}/<key>   counts a visit to <key>; 200, text/plain: `{{name}} <key>: <visits>`
//!   other methods        405 (with `allow: GET`)
//!
//! The count lives in the actor's key-value storage under "visits", read on every request: storage is the truth,
//! and the instance may be closed and revived at any time. The write commits when the handler returns. A storage
//! failure answers 500 (507 when the actor is over its storage_limit) with the host's message.
use micromono::{kv, Error, HttpRequest, HttpResponse, Result, Service};

#[derive(Default)]
struct Visits;

fn count() -> Result<i64> {
    let visits = kv::get_i64(b"visits")?.unwrap_or(0) + 1;
    kv::put_i64(b"visits", visits)?;
    Ok(visits)
}

impl Service for Visits {
    fn http(&mut self, req: &HttpRequest, res: &mut HttpResponse) -> Result<()> {
        res.header("content-type", "text/plain")?;
        if req.method != b"GET" {
            res.status = 405;
            return res.header("allow", "GET");
        }
        match count() {
            Ok(visits) => {
                res.body.extend_from_slice(b"{{name}} ");
                res.body.extend_from_slice(&micromono::actor_key().unwrap_or_default());
                res.body.extend_from_slice(format!(": {visits}").as_bytes());
            }
            Err(err) => {
                res.status = if matches!(err, Error::StorageFull) { 507 } else { 500 };
                res.body.extend_from_slice(b"storage error: ");
                res.body.extend_from_slice(micromono::last_error().as_bytes());
            }
        }
        Ok(())
    }
}

micromono::service!(Visits);
