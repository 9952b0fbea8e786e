//! The actor's own SQLite database (docs/abi.md `sql_exec`). Statements are part of the request's transaction;
//! several statements in one call, ATTACH/DETACH, BEGIN/COMMIT/SAVEPOINT, PRAGMA and extensions are refused.

use crate::codec::{self, Reader};
use crate::{host, Error, Result};

/// A statement parameter or a result cell (SQLite's five storage classes). Text is UTF-8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// A cell as decoded: text and blobs as ranges of the result block.
#[derive(Clone, Copy, Debug)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

/// The result of a statement: column names, rows of cells, and what it changed.
#[derive(Clone, Debug)]
pub struct Rows {
    block: Vec<u8>,
    names: Vec<(usize, usize)>,
    cells: Vec<Cell>,
    /// The number of rows.
    pub rows: usize,
    /// Rows the statement inserted, updated or deleted.
    pub changes: u32,
    /// The rowid of the last INSERT on this actor's database.
    pub last_insert_rowid: i64,
}

impl Rows {
    /// The number of columns.
    pub fn columns(&self) -> usize {
        self.names.len()
    }

    /// Column `col`'s name ("" when out of range).
    pub fn column_name(&self, col: usize) -> &str {
        self.names
            .get(col)
            .and_then(|&(at, n)| std::str::from_utf8(&self.block[at..at + n]).ok())
            .unwrap_or("")
    }

    /// The cell at (`row`, `col`), or `Value::Null` when either is out of range.
    pub fn get(&self, row: usize, col: usize) -> Value<'_> {
        if row >= self.rows || col >= self.names.len() {
            return Value::Null;
        }
        match self.cells[row * self.names.len() + col] {
            Cell::Null => Value::Null,
            Cell::Integer(n) => Value::Integer(n),
            Cell::Real(x) => Value::Real(x),
            // Checked to be UTF-8 when decoded.
            Cell::Text(at, n) => Value::Text(std::str::from_utf8(&self.block[at..at + n]).unwrap_or("")),
            Cell::Blob(at, n) => Value::Blob(&self.block[at..at + n]),
        }
    }

    /// An INTEGER cell's value; `None` for the other types and out-of-range cells.
    pub fn int(&self, row: usize, col: usize) -> Option<i64> {
        match self.get(row, col) {
            Value::Integer(n) => Some(n),
            _ => None,
        }
    }

    /// A TEXT cell's text; `None` for the other types and out-of-range cells.
    pub fn text(&self, row: usize, col: usize) -> Option<&str> {
        match self.get(row, col) {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A TEXT or BLOB cell's bytes; `None` for the other types and out-of-range cells.
    pub fn bytes(&self, row: usize, col: usize) -> Option<&[u8]> {
        match self.get(row, col) {
            Value::Text(s) => Some(s.as_bytes()),
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }

    /// Decodes a result block; `None` if it is malformed.
    fn decode(block: Vec<u8>) -> Option<Rows> {
        let base = block.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - base;
        let mut r = Reader::new(&block);
        let columns = r.u32()? as usize;
        let rows = r.u32()? as usize;
        let changes = r.u32()?;
        r.u32()?; // reserved
        let last_insert_rowid = r.u64()? as i64;
        let mut names = Vec::with_capacity(columns.min(1024));
        for _ in 0..columns {
            let name = r.bytes()?;
            names.push((at(name), name.len()));
        }
        let mut cells = Vec::with_capacity(rows.saturating_mul(columns).min(1 << 16));
        for _ in 0..rows.saturating_mul(columns) {
            cells.push(match r.u8()? {
                0 => Cell::Null,
                1 => Cell::Integer(r.u64()? as i64),
                2 => Cell::Real(f64::from_bits(r.u64()?)),
                3 => {
                    let text = r.bytes()?;
                    std::str::from_utf8(text).ok()?;
                    Cell::Text(at(text), text.len())
                }
                4 => {
                    let blob = r.bytes()?;
                    Cell::Blob(at(blob), blob.len())
                }
                _ => return None,
            });
        }
        Some(Rows { names, cells, rows, changes, last_insert_rowid, block })
    }
}

/// Encodes parameters: `u32 count`, then each value tagged; empty when there are none.
fn encode_params(params: &[Value], out: &mut Vec<u8>) {
    if params.is_empty() {
        return;
    }
    out.extend_from_slice(&(params.len() as u32).to_le_bytes());
    for value in params {
        match *value {
            Value::Null => out.push(0),
            Value::Integer(n) => {
                out.push(1);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Value::Real(x) => {
                out.push(2);
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            Value::Text(s) => {
                out.push(3);
                codec::put_bytes(out, s.as_bytes());
            }
            Value::Blob(b) => {
                out.push(4);
                codec::put_bytes(out, b);
            }
        }
    }
}

/// Runs one SQL statement (SQLite's dialect) on this actor's database, binding `params` to its `?` placeholders:
/// `sql::exec("SELECT text FROM t WHERE id > ?", &[Value::Integer(since)])`. [`Error::Sql`] when it fails or is
/// not allowed; [`crate::last_error`] then has SQLite's message.
pub fn exec(statement: &str, params: &[Value]) -> Result<Rows> {
    let mut encoded = Vec::new();
    encode_params(params, &mut encoded);
    let mut block = Vec::new();
    codec::fetch_into(&mut block, 1024, |ptr, cap| host::sql_exec(statement.as_bytes(), &encoded, ptr, cap))?;
    Rows::decode(block).ok_or_else(|| {
        crate::__rt::set_local_error("micromono: the host's SQL result does not decode");
        Error::Invalid
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_values_through_the_encoding() {
        let params = [Value::Null, Value::Integer(-5), Value::Real(1.5), Value::Text("hé"), Value::Blob(b"\x00\x01")];
        let mut block = Vec::new();
        for word in [5u32, 1, 0, 0] {
            block.extend_from_slice(&word.to_le_bytes());
        }
        block.extend_from_slice(&7i64.to_le_bytes());
        for name in ["a", "b", "c", "d", "e"] {
            codec::put_bytes(&mut block, name.as_bytes());
        }
        let mut encoded = Vec::new();
        encode_params(&params, &mut encoded);
        block.extend_from_slice(&encoded[4..]); // the same tagged values, as one row
        let rows = Rows::decode(block).unwrap();
        assert_eq!((rows.columns(), rows.rows, rows.last_insert_rowid), (5, 1, 7));
        assert_eq!(rows.column_name(3), "d");
        for (col, value) in params.iter().enumerate() {
            assert_eq!(rows.get(0, col), *value);
        }
        assert_eq!(rows.int(0, 1), Some(-5));
        assert_eq!(rows.text(0, 3), Some("hé"));
        assert_eq!(rows.get(1, 0), Value::Null);
        let mut none = Vec::new();
        encode_params(&[], &mut none);
        assert!(none.is_empty());
    }
}
