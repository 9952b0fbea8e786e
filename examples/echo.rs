//! echo_rust: returns what it is sent (micromono example service, Rust); the same behaviour as echo.c.
//!
//!   HTTP   200 with the request body; content-type copied from the request, else application/octet-stream.
//!   CALL   replies the payload unchanged.
//!   MESSAGE accepted and dropped.
//! Stateless: any number of instances.

use micromono::{HttpRequest, HttpResponse, Result, Service};

#[derive(Default)]
struct Echo;

impl Service for Echo {
    fn http<'r>(&mut self, req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {
        let content_type = req.header("content-type").unwrap_or(b"application/octet-stream");
        res.header("content-type", content_type)?;
        res.body_ref(req.body); // the request outlives the handler: no copy here
        Ok(())
    }

    fn call(&mut self, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        reply.extend_from_slice(req);
        Ok(())
    }

    fn message(&mut self, _msg: &[u8]) -> Result<()> {
        Ok(())
    }
}

micromono::service!(Echo);
