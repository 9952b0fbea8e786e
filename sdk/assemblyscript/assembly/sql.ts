// sql.ts: an actor's own SQLite database (docs/abi.md "Actors", sql_exec), imported by a service as `mm.sql`.
//
//     const r = mm.sql.exec("SELECT id, text FROM messages WHERE id > ?", mm.sql.params().int(since));
//     if (r == null) { mm.logError(mm.lastError()); mm.fail(500); return; }
//     for (let i = 0; i < r.rows; i++) use(r.getInt(i, 0), r.getText(i, 1));

import * as host from "./host";
import {
  alloc, arenaAvail, Buf, Bytes, failLocally, lend, newBuf, rawLen, rawOf, rawPtr, READ_MIN_SPACE, settle, viewOf,
} from "./bytes";

/** Value types: statement parameters and result cells (SQLite's five storage classes). */
export const NULL: i32 = 0;
export const INT: i32 = 1;
export const REAL: i32 = 2;
export const TEXT: i32 = 3;
export const BLOB: i32 = 4;

const ERR_INVALID = -15;

/**
 * Parameters for exec(), bound to the statement's `?` placeholders in order. There is one builder, which params()
 * empties and returns: build the parameters of one statement at a time.
 */
@final @unmanaged
export class Params {
  buf: Buf = changetype<Buf>(0);
  count: u32 = 0;

  private tag(t: u8): Params {
    if (this.count == 0) this.buf.len = 4;
    this.count++;
    store<u32>(this.buf.ptr, this.count);
    this.buf.appendByte(t);
    return this;
  }

  /** Adds NULL. */
  null(): Params {
    return this.tag(<u8>NULL);
  }

  /** Adds an INTEGER. */
  int(v: i64): Params {
    this.tag(<u8>INT);
    store<i64>(this.buf.reserve(8), v);
    this.buf.len += 8;
    return this;
  }

  /** Adds a REAL. */
  real(v: f64): Params {
    this.tag(<u8>REAL);
    store<f64>(this.buf.reserve(8), v);
    this.buf.len += 8;
    return this;
  }

  /** Adds TEXT: a string (as UTF-8) or UTF-8 bytes. */
  text<T>(v: T): Params {
    return this.sized<T>(<u8>TEXT, v);
  }

  /** Adds a BLOB. */
  blob<T>(v: T): Params {
    return this.sized<T>(<u8>BLOB, v);
  }

  private sized<T>(t: u8, v: T): Params {
    this.tag(t);
    const b = this.buf;
    const at = b.len;
    b.reserve(4);
    b.len += 4;
    b.append<T>(v);
    store<u32>(b.ptr + at, <u32>(b.len - at - 4));
    return this;
  }
}

let theParams: Params = changetype<Params>(0);

/** The parameter builder, emptied: `mm.sql.params().int(1).text("a")`. */
export function params(): Params {
  let p = theParams;
  if (changetype<usize>(p) == 0) {
    p = changetype<Params>(heap.alloc(offsetof<Params>()));
    p.buf = newBuf();
    p.buf.reserve(4);
    theParams = p;
  }
  p.count = 0;
  p.buf.len = 4;
  store<u32>(p.buf.ptr, 0);
  return p;
}

/**
 * The result of a statement: `columns` per row, `rows` rows, `changes` (rows inserted, updated or deleted) and
 * `lastInsertRowid`. Cells are read with the getters below; a cell out of range reads as NULL. Valid until the
 * handler returns.
 */
@final @unmanaged
export class Result {
  columns: i32 = 0;
  rows: i32 = 0;
  changes: u32 = 0;
  lastInsertRowid: i64 = 0;
  names: usize = 0; // the offset of each column name (u32 length, bytes), `columns` of them
  cells: usize = 0; // the address of each cell (tag, value), row after row

  private cell(row: i32, col: i32): usize {
    if (<u32>row >= <u32>this.rows || <u32>col >= <u32>this.columns) return 0;
    return load<usize>(this.cells + ((<usize>row * this.columns + col) << alignof<usize>()));
  }

  /** The cell's type: NULL, INT, REAL, TEXT or BLOB. */
  getType(row: i32, col: i32): i32 {
    const c = this.cell(row, col);
    return c ? <i32>load<u8>(c) : NULL;
  }

  /** Whether the cell is NULL (or out of range). */
  isNull(row: i32, col: i32): bool {
    return this.getType(row, col) == NULL;
  }

  /** An INTEGER cell's value (a REAL one truncated); 0 for the other types. */
  getInt(row: i32, col: i32): i64 {
    const c = this.cell(row, col);
    if (!c) return 0;
    const t = <i32>load<u8>(c);
    if (t == INT) return load<i64>(c + 1);
    if (t == REAL) return <i64>load<f64>(c + 1);
    return 0;
  }

  /** A REAL cell's value (an INTEGER one converted); 0.0 for the other types. */
  getReal(row: i32, col: i32): f64 {
    const c = this.cell(row, col);
    if (!c) return 0;
    const t = <i32>load<u8>(c);
    if (t == REAL) return load<f64>(c + 1);
    if (t == INT) return <f64>load<i64>(c + 1);
    return 0;
  }

  /** A TEXT or BLOB cell's bytes; null for the other types. */
  getText(row: i32, col: i32): Bytes | null {
    const c = this.cell(row, col);
    if (!c) return null;
    const t = <i32>load<u8>(c);
    if (t != TEXT && t != BLOB) return null;
    return viewOf(c + 5, <i32>load<u32>(c + 1));
  }

  /** The name of column `col` (empty when out of range). */
  columnName(col: i32): Bytes {
    if (<u32>col >= <u32>this.columns) return viewOf(0, 0);
    const p = load<usize>(this.names + (<usize>col << alignof<usize>()));
    return viewOf(p + 4, <i32>load<u32>(p));
  }
}

/**
 * Runs one SQL statement (SQLite's dialect) on this actor's own database, with `params` bound to its `?`
 * placeholders. The result, or null: lastCode() is then ERR_SQL when the statement failed or is not allowed
 * (several statements, ATTACH, BEGIN/COMMIT/SAVEPOINT, PRAGMA), with SQLite's message in lastError().
 */
export function exec(statement: string, params: Params | null = null): Result | null {
  rawOf<string>(statement);
  const sp = rawPtr;
  const sl = rawLen;
  let pp: usize = 0;
  let pl: i32 = 0;
  if (params != null && params.count > 0) {
    pp = params.buf.ptr;
    pl = params.buf.len;
  }
  const dst = lend(READ_MIN_SPACE);
  const cap = arenaAvail;
  const block = settle(host.sql_exec(sp, sl, pp, pl, dst, <i32>cap), dst, cap);
  if (block == null) return null;
  return decode(block);
}

/** Decodes a result block, checking it once so that the getters never run past it. */
function decode(block: Bytes): Result | null {
  const p = block.ptr;
  const end = p + block.len;
  if (block.len < 24) return malformed();
  const columns = load<u32>(p);
  const rows = load<u32>(p, 4);
  const cellCount = <u64>columns * <u64>rows;
  if (cellCount > <u64>block.len) return malformed(); // every cell takes at least one byte
  const r = changetype<Result>(alloc(offsetof<Result>()));
  r.columns = <i32>columns;
  r.rows = <i32>rows;
  r.changes = load<u32>(p, 8);
  r.lastInsertRowid = load<i64>(p, 16);
  r.names = alloc(<usize>columns << alignof<usize>());
  r.cells = alloc(<usize>cellCount << alignof<usize>());
  let q = p + 24;
  for (let i: u32 = 0; i < columns; i++) {
    if (end - q < 4 || <usize>load<u32>(q) > end - q - 4) return malformed();
    store<usize>(r.names + (<usize>i << alignof<usize>()), q);
    q += 4 + <usize>load<u32>(q);
  }
  for (let i: u64 = 0; i < cellCount; i++) {
    if (q >= end) return malformed();
    store<usize>(r.cells + (<usize>i << alignof<usize>()), q);
    const t = <i32>load<u8>(q);
    let size: usize;
    if (t == NULL) size = 1;
    else if (t == INT || t == REAL) size = 9;
    else if (t == TEXT || t == BLOB) {
      if (end - q < 5) return malformed();
      size = 5 + <usize>load<u32>(q + 1);
    } else return malformed();
    if (size > end - q) return malformed();
    q += size;
  }
  return r;
}

function malformed(): Result | null {
  failLocally(ERR_INVALID, "sql.exec: the host's answer does not decode");
  return null;
}
