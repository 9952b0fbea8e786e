//! conformance: the SDK conformance service in Rust (tests/conformance/README.md is its specification; the same
//! service exists in C, Zig and AssemblyScript, and tests/test_conformance.py expects the same answers from each).
//!
//! An actor with WebSockets, on routes "/conf/{key}" and "/conf/{key}/..." (the README has its manifest).

use micromono::{kv, ws, HttpRequest, HttpResponse, Result, Service};

const LANG: &str = "rust";

#[derive(Default)]
struct Conformance;

/// An answer with an empty body: no content-type (the README's last rule).
fn empty(res: &mut HttpResponse, status: u16) -> Result<()> {
    res.status = status;
    Ok(())
}

fn failed(res: &mut HttpResponse, what: &str, err: micromono::Error) -> Result<()> {
    res.status = 502;
    res.body.extend_from_slice(format!("{} failed: {}", what, err.code()).as_bytes());
    Ok(())
}

fn echo<'r>(req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {
    if !req.body.is_empty() {
        res.header("content-type", req.header("content-type").unwrap_or(b"application/octet-stream"))?;
    }
    res.header("x-conformance", LANG)?;
    res.body_ref(req.body);
    Ok(())
}

fn kv_route(req: &HttpRequest, res: &mut HttpResponse, name: &[u8]) -> Result<()> {
    match req.method {
        b"PUT" => {
            kv::put(name, req.body)?; // a storage failure (not part of the spec): application error 500
            empty(res, 204)
        }
        b"GET" => {
            if kv::get_into(name, res.body)? {
                Ok(())
            } else {
                empty(res, 404)
            }
        }
        b"DELETE" => empty(res, if kv::delete(name)? { 204 } else { 404 }),
        _ => empty(res, 404),
    }
}

impl Service for Conformance {
    fn http<'r>(&mut self, req: &HttpRequest<'r>, res: &mut HttpResponse<'r>) -> Result<()> {
        // The path is /conf/<key>/<what>: skip the key, whatever it holds.
        let rest = match req.path.strip_prefix(b"/conf/") {
            Some(rest) => rest,
            None => return empty(res, 404),
        };
        let what = &rest[rest.iter().position(|&c| c == b'/').unwrap_or(rest.len())..];
        let post = req.method == b"POST";
        match what {
            b"/echo" if post => echo(req, res),
            b"/call" if post => match micromono::call_into("peer", req.body, res.body) {
                Ok(()) => Ok(()),
                Err(e) => failed(res, "call", e),
            },
            b"/send" if post => {
                let mut target = b"conformance/".to_vec();
                target.extend_from_slice(&micromono::actor_key().unwrap_or_default());
                let target = String::from_utf8_lossy(&target).into_owned();
                match micromono::send(&target, req.body) {
                    Ok(()) => empty(res, 202),
                    Err(e) => failed(res, "send", e),
                }
            }
            b"/trap" if post => panic!("conformance: trap requested"),
            b"/log" if post => {
                micromono::log(micromono::Level::Info, req.body);
                empty(res, 204)
            }
            _ => match what.strip_prefix(b"/kv/") {
                Some(name) if !name.is_empty() => kv_route(req, res, name),
                _ => empty(res, 404),
            },
        }
    }

    fn call(&mut self, req: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        reply.extend_from_slice(req);
        Ok(())
    }

    fn message(&mut self, msg: &[u8]) -> Result<()> {
        kv::put(b"sent", msg)
    }

    // No ws_open or ws_close: the defaults accept every connection and ignore its close.
    fn ws_message(&mut self, conn: u64, kind: ws::Type, data: &[u8]) -> Result<()> {
        // As in the C service, a failed send or publish (the client gone meanwhile) fails nothing.
        let _ = ws::send(conn, kind, data);
        if kind == ws::Type::Text {
            let _ = ws::publish(ws::Type::Text, data, b"");
        }
        Ok(())
    }
}

micromono::service!(Conformance);
