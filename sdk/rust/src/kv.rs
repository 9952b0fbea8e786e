//! The actor's key-value storage (docs/abi.md "Actors"): byte-string keys (1 to 2048 bytes) in bytewise order,
//! byte-string values. Writes are part of the request's transaction.

use crate::codec::{self, Reader};
use crate::{host, Error, Result};

/// The value stored under `key`, or `None` when there is none. Values of any size are handled.
pub fn get(key: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut value = Vec::new();
    Ok(if get_into(key, &mut value)? { Some(value) } else { None })
}

/// [`get`] into a buffer of the caller's (replaced by the value, or emptied): `true` when there is a value. A
/// reused buffer makes a read that allocates nothing.
pub fn get_into(key: &[u8], value: &mut Vec<u8>) -> Result<bool> {
    match codec::fetch_into(value, 256, |ptr, cap| host::kv_get(key, ptr, cap)) {
        Ok(()) => Ok(true),
        Err(Error::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Stores `value` (may be empty) under `key`. [`Error::StorageFull`] means nothing was written.
pub fn put(key: &[u8], value: &[u8]) -> Result<()> {
    codec::check(host::kv_put(key, value)).map(|_| ())
}

/// Deletes `key`: `true` when a value was deleted, `false` when there was none.
pub fn delete(key: &[u8]) -> Result<bool> {
    codec::check(host::kv_delete(key)).map(|n| n == 1)
}

/// The integer stored under `key` as decimal text (`"42"`, `"-7"`, as the C and Zig SDKs store them), or `None`
/// when there is none. [`Error::Invalid`] when the value is not a decimal i64.
pub fn get_i64(key: &[u8]) -> Result<Option<i64>> {
    let mut buf = Vec::with_capacity(24);
    if !get_into(key, &mut buf)? {
        return Ok(None);
    }
    match std::str::from_utf8(&buf).ok().and_then(parse_i64) {
        Some(n) => Ok(Some(n)),
        None => {
            crate::__rt::set_local_error("micromono: the stored value is not a decimal integer");
            Err(Error::Invalid)
        }
    }
}

/// All of `text` as a decimal i64 (a leading '-' allowed; no '+', '_', spaces or other bytes).
fn parse_i64(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Stores `value` under `key` as decimal text.
pub fn put_i64(key: &[u8], value: i64) -> Result<()> {
    put(key, value.to_string().as_bytes())
}

/// Which entries [`list`] returns; `ListOptions::default()` lists them all. An empty bound means "no bound".
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOptions<'a> {
    /// Only keys starting with it.
    pub prefix: &'a [u8],
    /// Only keys >= it.
    pub start: &'a [u8],
    /// Only keys < it.
    pub end: &'a [u8],
    /// At most this many entries; 0: no limit.
    pub limit: u32,
    /// Largest key first.
    pub reverse: bool,
}

/// The entries [`list`] found, in order: `for (key, value) in list.iter() { ... }`.
#[derive(Clone, Debug)]
pub struct List {
    block: Vec<u8>,
    count: u32,
}

impl List {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries as (key, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut r = Reader::new(self.block.get(4..).unwrap_or(&[]));
        (0..self.count).map_while(move |_| {
            let key_len = r.u32()? as usize;
            let value_len = r.u32()? as usize;
            Some((r.take(key_len)?, r.take(value_len)?))
        })
    }
}

/// Lists entries in key order (bytewise), filtered by `options`:
/// `kv::list(&ListOptions { prefix: b"user/", limit: 10, ..Default::default() })`.
pub fn list(options: &ListOptions) -> Result<List> {
    let mut opts = Vec::with_capacity(20 + options.prefix.len() + options.start.len() + options.end.len());
    opts.extend_from_slice(&options.limit.to_le_bytes());
    opts.extend_from_slice(&(options.reverse as u32).to_le_bytes());
    for part in [options.prefix, options.start, options.end] {
        opts.extend_from_slice(&(part.len() as u32).to_le_bytes());
    }
    for part in [options.prefix, options.start, options.end] {
        opts.extend_from_slice(part);
    }
    let mut block = Vec::new();
    codec::fetch_into(&mut block, 1024, |ptr, cap| host::kv_list(&opts, ptr, cap))?;
    let count = Reader::new(&block).u32().unwrap_or(0);
    Ok(List { block, count })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_decimal_integers_strictly() {
        assert_eq!(super::parse_i64("42"), Some(42));
        assert_eq!(super::parse_i64("-7"), Some(-7));
        for bad in ["", "-", "+1", " 1", "1_0", "x", "99999999999999999999"] {
            assert_eq!(super::parse_i64(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn iterates_a_list_block() {
        let mut block = 2u32.to_le_bytes().to_vec();
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"bc", b"")] {
            block.extend_from_slice(&(k.len() as u32).to_le_bytes());
            block.extend_from_slice(&(v.len() as u32).to_le_bytes());
            block.extend_from_slice(k);
            block.extend_from_slice(v);
        }
        let list = super::List { block, count: 2 };
        let entries: Vec<_> = list.iter().collect();
        assert_eq!(entries, vec![(&b"a"[..], &b"1"[..]), (&b"bc"[..], &b""[..])]);
    }
}
