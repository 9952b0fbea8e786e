//! HTTP requests and responses (docs/abi.md "HTTP encoding").

use crate::codec::Reader;
use crate::{Error, Result};

/// A decoded HTTP request; every slice points into the request the host wrote and lives until the handler returns.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'r> {
    /// `GET`, `POST`, ...: compare with `req.method == b"POST"`.
    pub method: &'r [u8],
    /// Raw (percent-encoded), starts with '/'.
    pub path: &'r [u8],
    /// Without the '?'; empty when there is none.
    pub query: &'r [u8],
    /// The body; may hold any bytes.
    pub body: &'r [u8],
    /// The header lines as received (`Name: value` CRLF each); read them with [`HttpRequest::header`] or
    /// [`HttpRequest::headers`].
    pub raw_headers: &'r [u8],
}

/// One request header: the name as the client wrote it, the value without spaces or tabs around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'r> {
    pub name: &'r [u8],
    pub value: &'r [u8],
}

/// The request's headers in order (see [`HttpRequest::headers`]).
#[derive(Clone, Debug)]
pub struct Headers<'r> {
    rest: &'r [u8],
}

impl<'r> Iterator for Headers<'r> {
    type Item = Header<'r>;

    fn next(&mut self) -> Option<Header<'r>> {
        let eol = find_crlf(self.rest)?;
        let line = &self.rest[..eol];
        self.rest = &self.rest[eol + 2..];
        let colon = line.iter().position(|&c| c == b':').unwrap_or(line.len());
        let value = if colon < line.len() { &line[colon + 1..] } else { &line[line.len()..] };
        Some(Header { name: &line[..colon], value: trim(value) })
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

impl<'r> HttpRequest<'r> {
    /// All headers in order (a header sent twice appears twice).
    pub fn headers(&self) -> Headers<'r> {
        Headers { rest: self.raw_headers }
    }

    /// The value of the first header called `name` (compared ASCII-case-insensitively), or `None`.
    pub fn header(&self, name: &str) -> Option<&'r [u8]> {
        let name = name.as_bytes();
        self.headers().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Decodes a request and checks that its header block is whole lines. `None` if the encoding is broken.
    pub(crate) fn decode(input: &'r [u8]) -> Option<HttpRequest<'r>> {
        let mut r = Reader::new(input);
        let method_len = r.u16()? as usize;
        r.u16()?; // reserved
        let path_len = r.u32()? as usize;
        let query_len = r.u32()? as usize;
        let body_len = r.u32()? as usize;
        let method = r.take(method_len)?;
        let path = r.take(path_len)?;
        let query = r.take(query_len)?;
        let rest = r.rest;
        if body_len > rest.len() {
            return None;
        }
        let (raw_headers, body) = rest.split_at(rest.len() - body_len);
        if !raw_headers.is_empty() && !raw_headers.ends_with(b"\r\n") {
            return None;
        }
        Some(HttpRequest { method, path, query, body, raw_headers })
    }
}

/// The response an HTTP handler fills in. It starts as 200 with no headers and an empty body.
pub struct HttpResponse<'r> {
    /// The status (100 to 599, else the host answers 500).
    pub status: u16,
    /// The body: append to it (`res.body.extend_from_slice(..)`, or `write!` through `std::io::Write`). SDK-owned
    /// and reused, so appending to it allocates nothing once warm. [`HttpResponse::body_ref`] replaces it.
    pub body: &'r mut Vec<u8>,
    head: &'r mut Vec<u8>,
    header_count: u16,
    body_ref: Option<&'r [u8]>,
}

impl<'r> HttpResponse<'r> {
    /// A 200 response over the SDK's buffers (cleared here; `head` gets the 4 reserved bytes).
    pub(crate) fn new(head: &'r mut Vec<u8>, body: &'r mut Vec<u8>) -> HttpResponse<'r> {
        head.clear();
        head.extend_from_slice(&[0, 0, 0, 0]);
        body.clear();
        HttpResponse { status: 200, body, head, header_count: 0, body_ref: None }
    }

    /// Adds a header. Name and value are at most 65535 bytes each, without CR, LF or NUL (else the host answers
    /// 500); the host writes `content-length`, `connection` and `date` itself and drops those if given.
    /// [`Error::Invalid`] for a name or value over 65535 bytes or more than 65535 headers.
    pub fn header(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name.len() > 0xffff || value.len() > 0xffff || self.header_count == u16::MAX {
            crate::__rt::set_local_error("micromono: an HTTP header name or value is over 65535 bytes");
            return Err(Error::Invalid);
        }
        self.head.extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.head.extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.head.extend_from_slice(name);
        self.head.extend_from_slice(value);
        self.header_count += 1;
        Ok(())
    }

    /// Replaces the body with a copy of `bytes`.
    pub fn set_body(&mut self, bytes: &[u8]) {
        self.body_ref = None;
        self.body.clear();
        self.body.extend_from_slice(bytes);
    }

    /// Uses `bytes` as the body instead of [`HttpResponse::body`], without copying them into it: request data
    /// (`req.body`) or anything that outlives the handler (a `static`).
    pub fn body_ref(&mut self, bytes: &'r [u8]) {
        self.body_ref = Some(bytes);
    }

    /// Writes status and header count into the reserved bytes and joins header block and body: the reply.
    pub(crate) fn finish(self) -> &'r [u8] {
        let HttpResponse { status, body, head, header_count, body_ref } = self;
        head[0..2].copy_from_slice(&status.to_le_bytes());
        head[2..4].copy_from_slice(&header_count.to_le_bytes());
        match body_ref {
            Some(bytes) => {
                head.extend_from_slice(bytes);
                head
            }
            None if body.len() <= head.len() => {
                head.extend_from_slice(body);
                head
            }
            None => {
                // A large body: put the header block in front of it rather than copying it after the header
                // block, so it needs one buffer of its size, not two.
                body.splice(0..0, head.iter().copied());
                body
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(method: &str, path: &str, query: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(method.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&(query.len() as u32).to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(method.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(query.as_bytes());
        out.extend_from_slice(headers.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decodes_a_request_and_finds_headers_case_insensitively() {
        let raw = encode("POST", "/a/b", "x=1", "Host: h\r\nContent-Type: \t text/plain \r\nX: 1\r\nx: 2\r\n", b"hi");
        let req = HttpRequest::decode(&raw).unwrap();
        assert_eq!((req.method, req.path, req.query, req.body), (&b"POST"[..], &b"/a/b"[..], &b"x=1"[..], &b"hi"[..]));
        assert_eq!(req.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(req.header("x"), Some(&b"1"[..]));
        assert_eq!(req.header("missing"), None);
        assert_eq!(req.headers().count(), 4);
    }

    #[test]
    fn rejects_broken_encodings() {
        let raw = encode("GET", "/", "", "Host: h", b"");
        assert!(HttpRequest::decode(&raw).is_none(), "a header block must end with CRLF");
        assert!(HttpRequest::decode(&raw[..10]).is_none());
        let mut long_body = encode("GET", "/", "", "", b"");
        long_body[12] = 9;
        assert!(HttpRequest::decode(&long_body).is_none());
    }

    #[test]
    fn finishes_small_and_large_bodies_and_body_refs() {
        for size in [0usize, 3, 5000] {
            let (mut head, mut body) = (Vec::new(), Vec::new());
            let mut res = HttpResponse::new(&mut head, &mut body);
            res.status = 404;
            res.header("a", "bc").unwrap();
            res.body.extend(std::iter::repeat(b'z').take(size));
            let out = res.finish().to_vec();
            assert_eq!(&out[..4], &[0x94, 0x01, 1, 0]);
            assert_eq!(&out[4..11], b"\x01\x00\x02\x00abc");
            assert_eq!(out.len(), 11 + size);
        }
        let (mut head, mut body) = (Vec::new(), Vec::new());
        let data = b"referenced".to_vec();
        let mut res = HttpResponse::new(&mut head, &mut body);
        res.body.extend_from_slice(b"ignored");
        res.body_ref(&data);
        assert_eq!(res.finish(), b"\xc8\x00\x00\x00referenced");
    }
}
