//! Shared helpers: turning import results into `Result`s, fetching results of any size into a lent buffer, and
//! reading the ABI's little-endian encodings.

use crate::{host, Error, Result};

/// An import's result: `Ok` when it is >= 0, the error of its code otherwise.
pub fn check(code: i32) -> Result<i32> {
    if code < 0 {
        Err(Error::from_code(code))
    } else {
        Ok(code)
    }
}

/// Runs an import that writes a result of any size into a buffer it is lent (`call`, `kv_get`, `kv_list`,
/// `sql_exec`): `run(ptr, cap)` calls it with `out`'s capacity (at least `min_cap`) and returns the result's length
/// or a negative code. A result that fits costs no copy; one that does not is held by the host, and is fetched with
/// take_reply after growing `out`. `out` is replaced by the result.
pub fn fetch_into(out: &mut Vec<u8>, min_cap: usize, run: impl FnOnce(*mut u8, i32) -> i32) -> Result<()> {
    out.clear();
    if out.capacity() < min_cap {
        out.reserve(min_cap);
    }
    let cap = out.capacity().min(i32::MAX as usize);
    let n = check(run(out.as_mut_ptr(), cap as i32))? as usize;
    if n > cap {
        out.reserve_exact(n);
        let got = check(host::take_reply(out.as_mut_ptr(), n as i32))? as usize;
        // Safety: the host wrote `got` (<= n <= capacity) bytes at the start of the buffer.
        unsafe { out.set_len(got.min(n)) };
    } else {
        // Safety: the host wrote `n` (<= capacity) bytes at the start of the buffer.
        unsafe { out.set_len(n) };
    }
    Ok(())
}

/// Reads little-endian integers and u32-length-prefixed byte strings off the front of a block. Every read
/// returns `None` past the end.
pub struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Some(u16::from_le_bytes(a))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(a))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }

    /// A u32 length, then that many bytes.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Appends a u32-length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}
