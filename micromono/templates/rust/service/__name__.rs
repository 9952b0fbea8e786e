//! {{name}}: a micromono service in Rust (made by `micromono new`).
//!
//!   GET /{{name}}, or any path below it   200, text/plain: `hello from {{name}}`
//!   other methods                        405 (with `allow: GET`)
//!
//! The `Service` trait of the SDK (sdk/rust/src/lib.rs) lists the other handlers a service may define: `call` for
//! calls from other services (micromono.call), `message` for their messages (micromono.send).
use micromono::{HttpRequest, HttpResponse, Result, Service};

#[derive(Default)]
struct Hello;

impl Service for Hello {
    fn http(&mut self, req: &HttpRequest, res: &mut HttpResponse) -> Result<()> {
        if req.method != b"GET" {
            res.status = 405;
            return res.header("allow", "GET");
        }
        res.header("content-type", "text/plain")?;
        res.body.extend_from_slice(b"hello from {{name}}");
        Ok(())
    }
}

micromono::service!(Hello);
