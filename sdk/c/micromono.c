/*
 * micromono.c: the implementation behind micromono.h (guest ABI version 2, docs/abi.md).
 *
 * Owns the three ABI exports (`mm_abi_version`, `mm_inbox`, `mm_handle`; `mm_migrate` for MM_SCHEMA_VERSION), the
 * `micromono.*` imports, the inbox, the per-request arena (call replies, storage reads, SQL results, mm_alloc,
 * mm_last_error text) and the reply buffer. Nothing here keeps a
 * pointer into the inbox past the current entry, and every reply it returns stays untouched until the next entry,
 * which is what the host relies on when it copies the reply out.
 *
 * Compile it together with the service (not as a separate library), so that the service's strong handler
 * definitions replace the weak declarations in micromono.h.
 */
#include "micromono.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------------------------------
 * Host imports (module `micromono`). Pointers are offsets into this module's memory; the host bounds-checks them.
 * ------------------------------------------------------------------------------------------------------------- */

#define MM_IMPORT(name) __attribute__((import_module("micromono"), import_name(name)))

MM_IMPORT("call")
int32_t mm_host_call(const char *target, int32_t target_len, const void *req, int32_t req_len, void *reply,
                     int32_t reply_cap);
MM_IMPORT("take_reply") int32_t mm_host_take_reply(void *ptr, int32_t cap);
MM_IMPORT("send") int32_t mm_host_send(const char *target, int32_t target_len, const void *msg, int32_t msg_len);
MM_IMPORT("log") void mm_host_log(int32_t level, const char *msg, int32_t msg_len);
MM_IMPORT("last_error") int32_t mm_host_last_error(char *ptr, int32_t cap);
/* Optional (docs/abi.md): a module imports it only when mm_trace_context is called (the linker drops it otherwise). */
MM_IMPORT("trace_context") int32_t mm_host_trace_context(char *ptr, int32_t cap);

/* Actors (docs/abi.md "Actors"). */
MM_IMPORT("actor_key") int32_t mm_host_actor_key(char *ptr, int32_t cap);
MM_IMPORT("kv_get") int32_t mm_host_kv_get(const char *key, int32_t key_len, char *buf, int32_t buf_cap);
MM_IMPORT("kv_put") int32_t mm_host_kv_put(const char *key, int32_t key_len, const char *val, int32_t val_len);
MM_IMPORT("kv_delete") int32_t mm_host_kv_delete(const char *key, int32_t key_len);
MM_IMPORT("kv_list") int32_t mm_host_kv_list(const char *opts, int32_t opts_len, char *buf, int32_t buf_cap);
MM_IMPORT("sql_exec")
int32_t mm_host_sql_exec(const char *sql, int32_t sql_len, const char *params, int32_t params_len, char *buf,
                         int32_t buf_cap);
MM_IMPORT("alarm_set") int32_t mm_host_alarm_set(int64_t at_ms);
MM_IMPORT("alarm_get") int64_t mm_host_alarm_get(void);
MM_IMPORT("alarm_delete") int32_t mm_host_alarm_delete(void);

/* WebSockets (docs/abi.md "WebSockets"). Connection ids are u64; the ABI passes them as i64. */
MM_IMPORT("ws_send") int32_t mm_host_ws_send(int64_t conn, int32_t type, const char *ptr, int32_t len);
MM_IMPORT("ws_publish")
int32_t mm_host_ws_publish(int32_t type, const char *ptr, int32_t len, const char *tag, int32_t tag_len);
MM_IMPORT("ws_close") int32_t mm_host_ws_close(int64_t conn, int32_t code, const char *reason, int32_t reason_len);
MM_IMPORT("ws_tag") int32_t mm_host_ws_tag(int64_t conn, const char *tag, int32_t tag_len);

/* ---------------------------------------------------------------------------------------------------------------
 * Little-endian integers (docs/abi.md: all integers are little-endian)
 * ------------------------------------------------------------------------------------------------------------- */

static uint32_t rd16(const char *p) { return (uint32_t)(uint8_t)p[0] | (uint32_t)(uint8_t)p[1] << 8; }
static uint32_t rd32(const char *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static void wr16(char *p, uint32_t v) {
    p[0] = (char)(v & 0xff);
    p[1] = (char)(v >> 8 & 0xff);
}
static void wr32(char *p, uint32_t v) {
    wr16(p, v & 0xffff);
    wr16(p + 2, v >> 16);
}
static void wr64(char *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* ---------------------------------------------------------------------------------------------------------------
 * Byte strings
 * ------------------------------------------------------------------------------------------------------------- */

mm_bytes mm_str(const char *s) { return (mm_bytes){s, s ? strlen(s) : 0}; }

bool mm_bytes_eq(mm_bytes a, const char *s) {
    size_t n = strlen(s);
    return a.len == n && (n == 0 || memcmp(a.ptr, s, n) == 0);
}

bool mm_bytes_starts_with(mm_bytes a, const char *prefix) {
    size_t n = strlen(prefix);
    return a.len >= n && (n == 0 || memcmp(a.ptr, prefix, n) == 0);
}

mm_bytes mm_bytes_from(mm_bytes a, size_t offset) {
    if (offset > a.len) offset = a.len;
    return (mm_bytes){a.ptr ? a.ptr + offset : NULL, a.len - offset};
}

/* Cuts `n` bytes off the front of *rest into *out; false if there are fewer. */
static bool take(mm_bytes *rest, size_t n, mm_bytes *out) {
    if (n > rest->len) return false;
    *out = (mm_bytes){rest->ptr, n};
    rest->ptr += n;
    rest->len -= n;
    return true;
}

char *mm_cstr(mm_bytes a) {
    char *s = mm_alloc(a.len + 1);
    if (!s) return NULL;
    if (a.len) memcpy(s, a.ptr, a.len);
    s[a.len] = '\0';
    return s;
}

bool mm_parse_i64(mm_bytes s, int64_t *out) {
    size_t i = 0;
    bool negative = s.len > 0 && s.ptr[0] == '-';
    if (negative) i = 1;
    if (i == s.len) return false;
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
    for (; i < s.len; i++) {
        unsigned digit = (unsigned)(s.ptr[i] - '0');
        if (digit > 9 || v > (limit - digit) / 10) return false;
        v = v * 10 + digit;
    }
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Growable buffers
 * ------------------------------------------------------------------------------------------------------------- */

/* Makes room for `extra` more bytes. On failure the buffer is unchanged apart from `failed`. */
static bool buf_reserve(mm_buf *b, size_t extra) {
    if (b->failed) return false;
    if (extra <= b->cap - b->len) return true;
    if (extra > SIZE_MAX - b->len) return b->failed = true, false;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->ptr, cap);
    if (!p) return b->failed = true, false;
    b->ptr = p;
    b->cap = cap;
    return true;
}

bool mm_buf_append(mm_buf *b, const void *data, size_t len) {
    if (!buf_reserve(b, len)) return false;
    if (len) memcpy(b->ptr + b->len, data, len);
    b->len += len;
    return true;
}

bool mm_buf_append_str(mm_buf *b, const char *s) { return mm_buf_append(b, s, strlen(s)); }
bool mm_buf_append_bytes(mm_buf *b, mm_bytes s) { return mm_buf_append(b, s.ptr, s.len); }
bool mm_buf_append_byte(mm_buf *b, char c) { return mm_buf_append(b, &c, 1); }

bool mm_buf_append_u64(mm_buf *b, uint64_t v) {
    char tmp[20];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return mm_buf_append(b, tmp + i, sizeof tmp - i);
}

bool mm_buf_append_i64(mm_buf *b, int64_t v) {
    if (v >= 0) return mm_buf_append_u64(b, (uint64_t)v);
    return mm_buf_append_byte(b, '-') && mm_buf_append_u64(b, (uint64_t)0 - (uint64_t)v);
}

bool mm_buf_append_json_string(mm_buf *b, const void *data, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = data;
    size_t run = 0; /* start of the current run of bytes that need no escaping */
    if (!mm_buf_append_byte(b, '"')) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        mm_buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': mm_buf_append(b, "\\\"", 2); break;
        case '\\': mm_buf_append(b, "\\\\", 2); break;
        case '\n': mm_buf_append(b, "\\n", 2); break;
        case '\r': mm_buf_append(b, "\\r", 2); break;
        case '\t': mm_buf_append(b, "\\t", 2); break;
        default: {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            mm_buf_append(b, esc, sizeof esc);
        }
        }
    }
    mm_buf_append(b, s + run, len - run);
    return mm_buf_append_byte(b, '"'); /* false if any append above failed: `failed` is sticky */
}

bool mm_buf_printf(mm_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    /* First try to format into the spare capacity; retry once with exactly the room vsnprintf asked for. */
    size_t room = b->failed ? 0 : b->cap - b->len;
    int n = vsnprintf(room ? b->ptr + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) return b->failed = true, false;
    if ((size_t)n >= room) {
        if (!buf_reserve(b, (size_t)n + 1)) return false;
        va_start(ap, fmt);
        vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return true;
}

void mm_buf_clear(mm_buf *b) {
    b->len = 0;
    b->failed = false;
}

void mm_buf_free(mm_buf *b) {
    free(b->ptr);
    *b = (mm_buf){0};
}

/* ---------------------------------------------------------------------------------------------------------------
 * Per-request arena: a chain of malloc'd chunks, reset on every entry. The oldest chunk is kept for reuse; chunks
 * added during a request (large call replies) are freed at the next entry.
 * ------------------------------------------------------------------------------------------------------------- */

#define ARENA_CHUNK (64 * 1024)    /* size of a normal chunk */
#define CALL_MIN_SPACE (16 * 1024) /* mm_call starts a new chunk if less than this is free, to avoid take_reply */
#define READ_MIN_SPACE (4 * 1024)  /* the same for storage reads, whose results are mostly small */

typedef struct chunk {
    struct chunk *prev; /* older chunk, or NULL for the kept one */
    size_t cap;
    size_t used;
    _Alignas(8) char data[];
} chunk;

static chunk *arena; /* the newest chunk */

static void arena_reset(void) {
    while (arena && arena->prev) {
        chunk *prev = arena->prev;
        free(arena);
        arena = prev;
    }
    if (arena) arena->used = 0;
}

/* Returns the free space of the newest chunk if at least `min` bytes are free there, else starts a new chunk
 * with room for `min` bytes. NULL when out of memory. *avail receives the free size. */
static char *arena_space(size_t min, size_t *avail) {
    if (!arena || arena->cap - arena->used < min) {
        size_t cap = min > ARENA_CHUNK ? min : ARENA_CHUNK;
        if (cap > SIZE_MAX - sizeof(chunk)) return NULL;
        chunk *c = malloc(sizeof(chunk) + cap);
        if (!c) return NULL;
        c->prev = arena;
        c->cap = cap;
        c->used = 0;
        arena = c;
    }
    *avail = arena->cap - arena->used;
    return arena->data + arena->used;
}

/* Marks `n` bytes of the space returned by arena_space as used, keeping the next allocation 8-byte aligned. */
static void arena_commit(size_t n) {
    size_t used = (arena->used + n + 7) & ~(size_t)7;
    arena->used = used > arena->cap ? arena->cap : used;
}

void *mm_alloc(size_t size) {
    size_t avail;
    char *p = arena_space(size ? size : 1, &avail);
    if (p) arena_commit(size);
    return p;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Calls, messages and errors
 * ------------------------------------------------------------------------------------------------------------- */

/* A failure the SDK detected itself (the host's last_error knows nothing of it), or NULL. */
static const char *local_error;

/* The application error mm_fail asked for (0: none); checked when the handler returns. */
static int pending_fail;

void mm_fail(int code) { pending_fail = code > 0 ? code : MM_APP_INTERNAL; }

static int fail_locally(int code, const char *why) {
    local_error = why;
    return code;
}

/* Lends the host the free end of the arena for an import's result (one byte stays in reserve for a NUL). A result
 * that fits there costs no copy and no extra allocation; `min` is how much free space is worth lending before
 * starting a new chunk. NULL when out of memory. */
static char *lend(size_t min, size_t *cap) {
    size_t avail;
    char *dst = arena_space(min, &avail);
    if (!dst) return NULL;
    *cap = avail - 1 > INT32_MAX ? INT32_MAX : avail - 1;
    return dst;
}

/* Finishes an import that wrote `n` bytes at `dst` (lent with `cap`), or returned a length over `cap` and holds the
 * result for take_reply, or failed with a negative code. On MM_OK the result is in *out, NUL-terminated, and
 * counted as used arena memory. `oom` is the local error for running out of memory. */
static int settle(int32_t n, char *dst, size_t cap, mm_bytes *out, const char *oom) {
    if (n < 0) {
        local_error = NULL; /* the host's last_error now describes the newest failure */
        return n;
    }
    if ((size_t)n > cap) {
        /* The result did not fit and the host holds it until the next import: fetch it into a chunk of its own. */
        size_t avail;
        dst = arena_space((size_t)n + 1, &avail);
        if (!dst) return fail_locally(MM_ERR_TOO_LARGE, oom);
        int32_t got = mm_host_take_reply(dst, n);
        if (got < 0) {
            local_error = NULL;
            return got;
        }
        n = got;
    }
    dst[n] = '\0';
    arena_commit((size_t)n + 1);
    if (out) *out = (mm_bytes){dst, (size_t)n};
    return MM_OK;
}

int mm_call(const char *target, const void *req, size_t req_len, mm_bytes *reply) {
    size_t target_len = strlen(target);
    if (req_len > INT32_MAX || target_len > INT32_MAX)
        return fail_locally(MM_ERR_TOO_LARGE, "mm_call: request is larger than 2 GiB");
    size_t cap;
    char *dst = lend(CALL_MIN_SPACE, &cap);
    if (!dst) return fail_locally(MM_ERR_TOO_LARGE, "mm_call: out of memory for the reply buffer");
    int32_t n = mm_host_call(target, (int32_t)target_len, req, (int32_t)req_len, dst, (int32_t)cap);
    return settle(n, dst, cap, reply, "mm_call: out of memory for the reply (the reply was dropped)");
}

int mm_send(const char *target, const void *msg, size_t msg_len) {
    size_t target_len = strlen(target);
    if (msg_len > INT32_MAX || target_len > INT32_MAX)
        return fail_locally(MM_ERR_TOO_LARGE, "mm_send: message is larger than 2 GiB");
    int32_t rc = mm_host_send(target, (int32_t)target_len, msg, (int32_t)msg_len);
    if (rc < 0) local_error = NULL;
    return rc < 0 ? rc : MM_OK;
}

mm_bytes mm_trace_context(void) {
    char *dst = mm_alloc(MM_TRACEPARENT_LEN + 1);
    if (!dst) return (mm_bytes){NULL, 0};
    int32_t n = mm_host_trace_context(dst, MM_TRACEPARENT_LEN);
    if (n != MM_TRACEPARENT_LEN) return (mm_bytes){NULL, 0}; /* 0: tracing is off */
    dst[n] = '\0';
    return (mm_bytes){dst, (size_t)n};
}

mm_bytes mm_last_error(void) {
    if (local_error) return mm_str(local_error);
    /* Try a small buffer first; the host returns the full length, so a second try always fits. */
    size_t avail;
    size_t want = 256;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *dst = arena_space(want + 1, &avail);
        if (!dst) break;
        int32_t n = mm_host_last_error(dst, (int32_t)want);
        if (n < 0) n = 0;
        if ((size_t)n <= want) {
            dst[n] = '\0';
            arena_commit((size_t)n + 1);
            return (mm_bytes){dst, (size_t)n};
        }
        want = (size_t)n;
    }
    return MM_LIT("(out of memory reading last_error)");
}

const char *mm_error_name(int code) {
    switch (code) {
    case MM_OK: return "ok";
    case MM_ERR_UNKNOWN_TARGET: return "unknown target";
    case MM_ERR_FORBIDDEN: return "forbidden";
    case MM_ERR_OVERLOADED: return "overloaded";
    case MM_ERR_TRAP: return "trap";
    case MM_ERR_TIMEOUT: return "timeout";
    case MM_ERR_DEPTH: return "call depth exceeded";
    case MM_ERR_APP: return "application error";
    case MM_ERR_TOO_LARGE: return "too large";
    case MM_ERR_NO_REPLY: return "no reply";
    case MM_ERR_UNAVAILABLE: return "unavailable";
    case MM_ERR_NOT_FOUND: return "not found";
    case MM_ERR_STORAGE_FULL: return "storage full";
    case MM_ERR_SQL: return "sql error";
    case MM_ERR_NOT_ACTOR: return "not an actor";
    case MM_ERR_INVALID: return "invalid";
    default: return "unknown error";
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Actors: key, key-value storage, SQL, alarm, schema (docs/abi.md "Actors")
 * ------------------------------------------------------------------------------------------------------------- */

/* Checks that a length fits the ABI's i32; keys and values over the host's own bounds fail there, with a message. */
static bool fits_i32(size_t len) { return len <= INT32_MAX; }

mm_bytes mm_actor_key(void) {
    size_t cap = 512; /* the longest key the ABI allows; a longer one is read again in full */
    for (int attempt = 0; attempt < 2; attempt++) {
        char *dst = mm_alloc(cap + 1);
        if (!dst) break;
        int32_t n = mm_host_actor_key(dst, (int32_t)cap);
        if (n < 0) {
            local_error = NULL;
            break;
        }
        if ((size_t)n <= cap) {
            dst[n] = '\0';
            return (mm_bytes){dst, (size_t)n};
        }
        cap = (size_t)n;
    }
    return (mm_bytes){NULL, 0};
}

int mm_kv_get(mm_bytes key, mm_bytes *value) {
    if (!fits_i32(key.len)) return fail_locally(MM_ERR_INVALID, "mm_kv_get: key is larger than 2 GiB");
    size_t cap;
    char *dst = lend(READ_MIN_SPACE, &cap);
    if (!dst) return fail_locally(MM_ERR_TOO_LARGE, "mm_kv_get: out of memory for the value");
    int32_t n = mm_host_kv_get(key.ptr, (int32_t)key.len, dst, (int32_t)cap);
    if (n == MM_ERR_NOT_FOUND) return fail_locally(MM_ERR_NOT_FOUND, "mm_kv_get: no value under this key");
    return settle(n, dst, cap, value, "mm_kv_get: out of memory for the value (it was dropped)");
}

int mm_kv_put(mm_bytes key, mm_bytes value) {
    if (!fits_i32(key.len) || !fits_i32(value.len))
        return fail_locally(MM_ERR_INVALID, "mm_kv_put: key or value is larger than 2 GiB");
    int32_t rc = mm_host_kv_put(key.ptr, (int32_t)key.len, value.ptr, (int32_t)value.len);
    if (rc < 0) local_error = NULL;
    return rc < 0 ? rc : MM_OK;
}

int mm_kv_delete(mm_bytes key) {
    if (!fits_i32(key.len)) return fail_locally(MM_ERR_INVALID, "mm_kv_delete: key is larger than 2 GiB");
    int32_t rc = mm_host_kv_delete(key.ptr, (int32_t)key.len);
    if (rc < 0) local_error = NULL;
    return rc;
}

int mm_kv_get_i64(mm_bytes key, int64_t *value) {
    mm_bytes text;
    *value = 0;
    int rc = mm_kv_get(key, &text);
    if (rc != MM_OK) return rc;
    if (!mm_parse_i64(text, value))
        return fail_locally(MM_ERR_INVALID, "mm_kv_get_i64: the value is not a decimal int64");
    return MM_OK;
}

int mm_kv_put_i64(mm_bytes key, int64_t value) {
    char text[21];
    size_t i = sizeof text;
    uint64_t v = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        text[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0) text[--i] = '-';
    return mm_kv_put(key, (mm_bytes){text + i, sizeof text - i});
}

int mm_kv_list(const mm_kv_list_options *opts, mm_kv_iter *it) {
    static const mm_kv_list_options all;
    if (!opts) opts = &all;
    size_t strings = opts->prefix.len + opts->start.len + opts->end.len;
    if (strings > INT32_MAX - 20) return fail_locally(MM_ERR_INVALID, "mm_kv_list: options are larger than 2 GiB");
    char *enc = mm_alloc(20 + strings);
    if (!enc) return fail_locally(MM_ERR_TOO_LARGE, "mm_kv_list: out of memory for the options");
    wr32(enc, opts->limit);
    wr32(enc + 4, opts->reverse ? 1 : 0);
    wr32(enc + 8, (uint32_t)opts->prefix.len);
    wr32(enc + 12, (uint32_t)opts->start.len);
    wr32(enc + 16, (uint32_t)opts->end.len);
    char *p = enc + 20;
    const mm_bytes *parts[] = {&opts->prefix, &opts->start, &opts->end};
    for (size_t i = 0; i < 3; i++) {
        if (parts[i]->len) memcpy(p, parts[i]->ptr, parts[i]->len);
        p += parts[i]->len;
    }

    size_t cap;
    char *dst = lend(READ_MIN_SPACE, &cap);
    if (!dst) return fail_locally(MM_ERR_TOO_LARGE, "mm_kv_list: out of memory for the entries");
    mm_bytes block;
    int rc = settle(mm_host_kv_list(enc, (int32_t)(20 + strings), dst, (int32_t)cap), dst, cap, &block,
                    "mm_kv_list: out of memory for the entries (they were dropped)");
    if (rc != MM_OK) return rc;

    /* Check the whole block once, so that mm_kv_next never reads past it. */
    if (block.len < 4) return fail_locally(MM_ERR_INVALID, "mm_kv_list: the host's reply is truncated");
    size_t count = rd32(block.ptr), pos = 4;
    for (size_t i = 0; i < count; i++) {
        if (block.len - pos < 8) return fail_locally(MM_ERR_INVALID, "mm_kv_list: the host's reply is truncated");
        size_t entry = (size_t)rd32(block.ptr + pos) + rd32(block.ptr + pos + 4);
        if (block.len - pos - 8 < entry)
            return fail_locally(MM_ERR_INVALID, "mm_kv_list: the host's reply is truncated");
        pos += 8 + entry;
    }
    *it = (mm_kv_iter){.count = count, .remaining = count, .pos = block.ptr + 4};
    return MM_OK;
}

bool mm_kv_next(mm_kv_iter *it, mm_bytes *key, mm_bytes *value) {
    if (!it->remaining) return false;
    size_t key_len = rd32(it->pos), value_len = rd32(it->pos + 4);
    *key = (mm_bytes){it->pos + 8, key_len};
    *value = (mm_bytes){it->pos + 8 + key_len, value_len};
    it->pos += 8 + key_len + value_len;
    it->remaining--;
    return true;
}

/* The size of one encoded SQL value (tag and payload), or 0 for an unknown type. */
static size_t sql_value_size(const mm_sql_value *v) {
    switch (v->type) {
    case MM_SQL_NULL: return 1;
    case MM_SQL_INT:
    case MM_SQL_REAL: return 9;
    case MM_SQL_TEXT:
    case MM_SQL_BLOB: return v->bytes.len > INT32_MAX - 5 ? 0 : 5 + v->bytes.len;
    default: return 0;
    }
}

/* Encodes the parameters (u32 count, then the tagged values) into per-request memory; NULL with *code set when
 * they are invalid or memory runs out. */
static char *sql_encode_params(const mm_sql_value *params, size_t n, size_t *len, int *code) {
    size_t total = 4;
    for (size_t i = 0; i < n; i++) {
        size_t size = sql_value_size(&params[i]);
        if (!size || size > INT32_MAX - total) {
            *code = fail_locally(MM_ERR_INVALID, "mm_sql_exec: a parameter has an unknown type or is over 2 GiB");
            return NULL;
        }
        total += size;
    }
    char *enc = mm_alloc(total), *p = enc;
    if (!enc) {
        *code = fail_locally(MM_ERR_TOO_LARGE, "mm_sql_exec: out of memory for the parameters");
        return NULL;
    }
    wr32(p, (uint32_t)n);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        const mm_sql_value *v = &params[i];
        *p++ = (char)v->type;
        if (v->type == MM_SQL_INT) {
            wr64(p, (uint64_t)v->integer);
            p += 8;
        } else if (v->type == MM_SQL_REAL) {
            uint64_t bits;
            memcpy(&bits, &v->real, sizeof bits);
            wr64(p, bits);
            p += 8;
        } else if (v->type == MM_SQL_TEXT || v->type == MM_SQL_BLOB) {
            wr32(p, (uint32_t)v->bytes.len);
            if (v->bytes.len) memcpy(p + 4, v->bytes.ptr, v->bytes.len);
            p += 4 + v->bytes.len;
        }
    }
    *len = total;
    return enc;
}

/* Cuts a u32-length-prefixed byte string off the front of *rest. */
static bool take_sized(mm_bytes *rest, mm_bytes *out) {
    if (rest->len < 4) return false;
    size_t len = rd32(rest->ptr);
    rest->ptr += 4;
    rest->len -= 4;
    if (len > rest->len) return false;
    *out = (mm_bytes){rest->ptr, len};
    rest->ptr += len;
    rest->len -= len;
    return true;
}

/* Decodes a result block (docs/abi.md `sql_exec`) into *out. Texts, blobs and names point into the block and are
 * NUL-terminated in place afterwards: the byte after each of them is a header already decoded, or the NUL that
 * settle() wrote after the block. */
static bool sql_decode_result(mm_bytes block, mm_sql_result *out) {
    if (block.len < 24) return false;
    size_t columns = rd32(block.ptr), rows = rd32(block.ptr + 4);
    out->changes = rd32(block.ptr + 8);
    out->last_insert_rowid = (int64_t)rd64(block.ptr + 16);
    mm_bytes rest = mm_bytes_from(block, 24);
    /* Every name takes at least 4 bytes and every cell at least 1: bound the counts before allocating. */
    if (columns > rest.len / 4 || (columns && rows > rest.len / columns)) return false;
    if (columns > SIZE_MAX / sizeof(mm_bytes) || rows * columns > SIZE_MAX / sizeof(mm_sql_value)) return false;
    mm_bytes *names = mm_alloc(columns * sizeof *names);
    mm_sql_value *values = mm_alloc(rows * columns * sizeof *values);
    if (!names || !values) return false;
    for (size_t c = 0; c < columns; c++)
        if (!take_sized(&rest, &names[c])) return false;
    for (size_t i = 0; i < rows * columns; i++) {
        mm_sql_value *v = &values[i];
        mm_bytes fixed;
        if (!take(&rest, 1, &fixed)) return false;
        v->type = (uint8_t)fixed.ptr[0];
        if (v->type == MM_SQL_NULL) continue;
        if (v->type == MM_SQL_INT || v->type == MM_SQL_REAL) {
            if (!take(&rest, 8, &fixed)) return false;
            uint64_t bits = rd64(fixed.ptr);
            if (v->type == MM_SQL_INT) v->integer = (int64_t)bits;
            else memcpy(&v->real, &bits, sizeof bits);
        } else if (v->type == MM_SQL_TEXT || v->type == MM_SQL_BLOB) {
            if (!take_sized(&rest, &v->bytes)) return false;
        } else {
            return false;
        }
    }
    if (rest.len) return false;
    for (size_t c = 0; c < columns; c++) ((char *)names[c].ptr)[names[c].len] = '\0';
    for (size_t i = 0; i < rows * columns; i++)
        if (values[i].type == MM_SQL_TEXT || values[i].type == MM_SQL_BLOB)
            ((char *)values[i].bytes.ptr)[values[i].bytes.len] = '\0';
    out->columns = columns;
    out->rows = rows;
    out->names = names;
    out->values = values;
    return true;
}

int mm_sql_exec(const char *sql, const mm_sql_value *params, size_t n, mm_sql_result *out) {
    size_t sql_len = strlen(sql), params_len = 0;
    if (!fits_i32(sql_len) || n > INT32_MAX)
        return fail_locally(MM_ERR_INVALID, "mm_sql_exec: statement or parameters over 2 GiB");
    const char *enc = NULL;
    if (n) {
        int code;
        enc = sql_encode_params(params, n, &params_len, &code);
        if (!enc) return code;
    }
    size_t cap;
    char *dst = lend(READ_MIN_SPACE, &cap);
    if (!dst) return fail_locally(MM_ERR_TOO_LARGE, "mm_sql_exec: out of memory for the result");
    int32_t len = mm_host_sql_exec(sql, (int32_t)sql_len, enc, (int32_t)params_len, dst, (int32_t)cap);
    mm_bytes block;
    int rc = settle(len, dst, cap, &block, "mm_sql_exec: out of memory for the result (it was dropped)");
    if (rc != MM_OK) return rc;
    mm_sql_result result;
    if (!sql_decode_result(block, &result))
        return fail_locally(MM_ERR_INVALID, "mm_sql_exec: the host's result does not decode (or out of memory)");
    if (out) *out = result;
    return MM_OK;
}

const mm_sql_value *mm_sql_get(const mm_sql_result *r, size_t row, size_t col) {
    static const mm_sql_value null_value = {.type = MM_SQL_NULL};
    if (row >= r->rows || col >= r->columns) return &null_value;
    return &r->values[row * r->columns + col];
}

int64_t mm_sql_get_int(const mm_sql_result *r, size_t row, size_t col) {
    const mm_sql_value *v = mm_sql_get(r, row, col);
    if (v->type == MM_SQL_INT) return v->integer;
    /* Truncate toward zero, saturating (a plain conversion of an out-of-range double is undefined). */
    if (v->type == MM_SQL_REAL && v->real == v->real) {
        if (v->real >= 9223372036854775807.0) return INT64_MAX;
        if (v->real <= -9223372036854775808.0) return INT64_MIN;
        return (int64_t)v->real;
    }
    return 0;
}

double mm_sql_get_real(const mm_sql_result *r, size_t row, size_t col) {
    const mm_sql_value *v = mm_sql_get(r, row, col);
    if (v->type == MM_SQL_REAL) return v->real;
    if (v->type == MM_SQL_INT) return (double)v->integer;
    return 0.0;
}

mm_bytes mm_sql_get_text(const mm_sql_result *r, size_t row, size_t col) {
    const mm_sql_value *v = mm_sql_get(r, row, col);
    if (v->type == MM_SQL_TEXT || v->type == MM_SQL_BLOB) return v->bytes;
    return (mm_bytes){NULL, 0};
}

bool mm_sql_is_null(const mm_sql_result *r, size_t row, size_t col) {
    return mm_sql_get(r, row, col)->type == MM_SQL_NULL;
}

int mm_alarm_set(int64_t at_ms) {
    int32_t rc = mm_host_alarm_set(at_ms);
    if (rc < 0) local_error = NULL;
    return rc < 0 ? rc : MM_OK;
}

int mm_alarm_get(int64_t *at_ms) {
    int64_t at = mm_host_alarm_get();
    if (at == -1) return fail_locally(MM_ERR_NOT_FOUND, "mm_alarm_get: no alarm is set");
    if (at < 0) {
        local_error = NULL;
        return at < INT32_MIN ? MM_ERR_INVALID : (int)at;
    }
    *at_ms = at;
    return MM_OK;
}

int mm_alarm_delete(void) {
    int32_t rc = mm_host_alarm_delete();
    if (rc < 0) local_error = NULL;
    return rc < 0 ? rc : MM_OK;
}

int64_t mm_now_ms(void) {
    struct timespec ts; /* C11's timespec_get: WASI clock_time_get(CLOCK_REALTIME) underneath */
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC) return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------------------------------------------
 * WebSockets (docs/abi.md "WebSockets")
 * ------------------------------------------------------------------------------------------------------------- */

/* MM_OK for an import's result of 0, or its negative code (whose message the host's last_error then holds). */
static int status_of(int32_t rc) {
    if (rc >= 0) return MM_OK;
    local_error = NULL;
    return rc;
}

int mm_ws_send(uint64_t conn, int type, mm_bytes data) {
    if (!fits_i32(data.len)) return fail_locally(MM_ERR_INVALID, "mm_ws_send: message is larger than 2 GiB");
    return status_of(mm_host_ws_send((int64_t)conn, type, data.ptr, (int32_t)data.len));
}

int mm_ws_send_text(uint64_t conn, const char *text) { return mm_ws_send(conn, MM_WS_TEXT, mm_str(text)); }

int mm_ws_publish(int type, mm_bytes data, mm_bytes tag) {
    if (!fits_i32(data.len) || !fits_i32(tag.len))
        return fail_locally(MM_ERR_INVALID, "mm_ws_publish: message or tag is larger than 2 GiB");
    return status_of(mm_host_ws_publish(type, data.ptr, (int32_t)data.len, tag.ptr, (int32_t)tag.len));
}

int mm_ws_publish_text(const char *text) { return mm_ws_publish(MM_WS_TEXT, mm_str(text), (mm_bytes){NULL, 0}); }

int mm_ws_close(uint64_t conn, int code, mm_bytes reason) {
    if (!fits_i32(reason.len)) return fail_locally(MM_ERR_INVALID, "mm_ws_close: reason is larger than 2 GiB");
    return status_of(mm_host_ws_close((int64_t)conn, code, reason.ptr, (int32_t)reason.len));
}

int mm_ws_tag(uint64_t conn, mm_bytes tag) {
    if (!fits_i32(tag.len)) return fail_locally(MM_ERR_INVALID, "mm_ws_tag: tag is larger than 2 GiB");
    return status_of(mm_host_ws_tag((int64_t)conn, tag.ptr, (int32_t)tag.len));
}

/* ---------------------------------------------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------------------------------------------- */

void mm_log(int level, const char *msg, size_t len) {
    mm_host_log(level, msg, len > INT32_MAX ? INT32_MAX : (int32_t)len);
}

void mm_log_debug(const char *msg) { mm_log(MM_LOG_DEBUG, msg, strlen(msg)); }
void mm_log_info(const char *msg) { mm_log(MM_LOG_INFO, msg, strlen(msg)); }
void mm_log_warn(const char *msg) { mm_log(MM_LOG_WARN, msg, strlen(msg)); }
void mm_log_error(const char *msg) { mm_log(MM_LOG_ERROR, msg, strlen(msg)); }

/* Formats on the stack up to 1 KiB, on the heap beyond (the daemon cuts lines over its own limit and says so);
 * only if malloc fails is the message cut at 1 KiB. */
void mm_logf(int level, const char *fmt, ...) {
    char line[1024];
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof line) {
        mm_log(level, line, (size_t)n);
    } else if (n >= 0) {
        char *whole = malloc((size_t)n + 1);
        if (whole != NULL) {
            vsnprintf(whole, (size_t)n + 1, fmt, again);
            mm_log(level, whole, (size_t)n);
            free(whole);
        } else {
            mm_log(level, line, sizeof line - 1);
        }
    }
    va_end(again);
}

/* ---------------------------------------------------------------------------------------------------------------
 * HTTP decoding and encoding (docs/abi.md "HTTP encoding")
 * ------------------------------------------------------------------------------------------------------------- */


/* Decodes an HTTP request. The header block is the request's header lines as received (docs/abi.md); it is
 * checked to be whole lines, so that the header functions below never run past it. */
static bool http_decode(mm_bytes in, mm_http_request *req) {
    if (in.len < 16) return false;
    size_t method_len = rd16(in.ptr);
    size_t path_len = rd32(in.ptr + 4), query_len = rd32(in.ptr + 8), body_len = rd32(in.ptr + 12);
    mm_bytes rest = mm_bytes_from(in, 16);
    if (!take(&rest, method_len, &req->method) || !take(&rest, path_len, &req->path) ||
        !take(&rest, query_len, &req->query) || body_len > rest.len)
        return false;
    req->body = (mm_bytes){rest.ptr + rest.len - body_len, body_len};
    rest.len -= body_len;
    req->headers = rest;
    if (rest.len && (rest.len < 2 || rest.ptr[rest.len - 2] != '\r' || rest.ptr[rest.len - 1] != '\n')) return false;
    size_t lines = 0;
    for (size_t i = 0; i + 1 < rest.len; i++)
        if (rest.ptr[i] == '\r' && rest.ptr[i + 1] == '\n') lines++;
    req->header_count = lines;
    return true;
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

bool mm_http_header_next(const mm_http_request *req, size_t *pos, mm_bytes *name, mm_bytes *value) {
    const char *block = req->headers.ptr;
    size_t end = req->headers.len, i = *pos, colon = 0;
    if (i >= end) return false;
    size_t eol = i;
    while (eol + 1 < end && !(block[eol] == '\r' && block[eol + 1] == '\n')) eol++;
    if (eol + 1 >= end) return false;
    for (colon = i; colon < eol && block[colon] != ':'; colon++) {
    }
    size_t v = colon < eol ? colon + 1 : eol, w = eol;
    while (v < w && is_ows(block[v])) v++;
    while (w > v && is_ows(block[w - 1])) w--;
    *name = (mm_bytes){block + i, colon - i};
    *value = (mm_bytes){block + v, w - v};
    *pos = eol + 2;
    return true;
}

static bool ascii_ieq(mm_bytes a, const char *s, size_t n) {
    if (a.len != n) return false;
    for (size_t i = 0; i < n; i++) {
        char x = a.ptr[i], y = s[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z') y = (char)(y + 32);
        if (x != y) return false;
    }
    return true;
}

mm_bytes mm_http_header(const mm_http_request *req, const char *name) {
    size_t n = strlen(name), pos = 0;
    mm_bytes k, v;
    while (mm_http_header_next(req, &pos, &k, &v))
        if (ascii_ieq(k, name, n)) return v;
    return (mm_bytes){NULL, 0};
}

/* The response under construction: the encoded header block (4 bytes reserved for status and header count, then
 * the entries) and the body. http_finish joins them into one reply. */
static mm_buf http_head, http_body;

mm_http_response mm_http_respond(int status) {
    mm_buf_clear(&http_head);
    mm_buf_clear(&http_body);
    mm_buf_append(&http_head, "\0\0\0\0", 4);
    return (mm_http_response){.status = status, .body = &http_body, .headers = &http_head};
}

mm_http_response mm_http_json(int status, const char *json) {
    mm_http_response res = mm_http_respond(status);
    mm_http_add_header(&res, "content-type", "application/json");
    mm_buf_append_str(res.body, json);
    return res;
}

void mm_http_add_header_bytes(mm_http_response *res, mm_bytes name, mm_bytes value) {
    if (name.len > 0xffff || value.len > 0xffff || res->header_count >= 0xffff || !res->headers) {
        res->invalid = true;
        return;
    }
    char lens[4];
    wr16(lens, (uint32_t)name.len);
    wr16(lens + 2, (uint32_t)value.len);
    mm_buf_append(res->headers, lens, 4);
    mm_buf_append_bytes(res->headers, name);
    mm_buf_append_bytes(res->headers, value);
    res->header_count++;
}

void mm_http_add_header(mm_http_response *res, const char *name, const char *value) {
    mm_http_add_header_bytes(res, mm_str(name), mm_str(value));
}

void mm_http_set_body(mm_http_response *res, const void *data, size_t len) {
    res->body_ref = (mm_bytes){NULL, 0};
    if (!res->body) return;
    mm_buf_clear(res->body);
    mm_buf_append(res->body, data, len);
}

void mm_http_set_body_ref(mm_http_response *res, const void *data, size_t len) {
    res->body_ref = (mm_bytes){data ? data : "", len};
}

mm_http_response mm_http_fail(int code) {
    mm_fail(code);
    return mm_http_respond(500);
}

/* Finishes a handler's response into the encoded reply; NULL (with *code set) if it cannot be encoded. */
static mm_buf *http_finish(mm_http_response *res, int *code) {
    *code = MM_APP_INTERNAL;
    if (res->invalid || res->headers != &http_head || res->body != &http_body) {
        mm_log_error("micromono: handle_http returned a response with an invalid header, or not built with "
                     "mm_http_respond");
        return NULL;
    }
    if (http_head.failed || http_body.failed) goto out_of_memory;
    wr16(http_head.ptr, res->status >= 0 && res->status <= 0xffff ? (uint32_t)res->status : 0);
    wr16(http_head.ptr + 2, (uint32_t)res->header_count);
    if (res->body_ref.ptr) {
        if (!mm_buf_append_bytes(&http_head, res->body_ref)) goto out_of_memory;
        return &http_head;
    }
    /* Slide the body up and put the header block in front of it, rather than appending the body to the header
     * block: a large body then needs one buffer of its size, not two. */
    size_t head_len = http_head.len, body_len = http_body.len;
    if (!buf_reserve(&http_body, head_len)) goto out_of_memory;
    memmove(http_body.ptr + head_len, http_body.ptr, body_len);
    memcpy(http_body.ptr, http_head.ptr, head_len);
    http_body.len += head_len;
    return &http_body;

out_of_memory:
    *code = MM_APP_NO_MEMORY;
    mm_log_error("micromono: out of memory building the HTTP response");
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * ABI exports
 * ------------------------------------------------------------------------------------------------------------- */

static char *inbox;
static size_t inbox_cap;
static mm_buf call_reply;

__attribute__((export_name("mm_abi_version"))) int32_t mm_export_abi_version(void) { return MM_ABI_VERSION; }

__attribute__((export_name("mm_inbox"))) char *mm_export_inbox(int32_t size) {
    size_t want = (uint32_t)size; /* the host treats sizes as unsigned */
    if (want <= inbox_cap && inbox) return inbox;
    /* Allocate the new buffer before freeing the old one: if this fails, the old buffer stays valid. */
    char *p = malloc(want ? want : 1);
    if (!p) return NULL;
    free(inbox);
    inbox = p;
    inbox_cap = want;
    return inbox;
}

/* Packs a reply for the host: (ptr << 32) | len, or a negative application error code. */
static int64_t reply_of(const mm_buf *b) {
    uintptr_t ptr = (uintptr_t)b->ptr;
    if (ptr >= 0x80000000u) return -MM_APP_INTERNAL; /* bit 63 would read as an error */
    return (int64_t)((uint64_t)ptr << 32 | (uint32_t)b->len);
}

static int64_t app_error(int code) {
    if (code < 0) code = code == INT32_MIN ? INT32_MAX : -code;
    return -(int64_t)code;
}

/* What every entry into a handler starts with: a fresh arena and no error left from the previous one. */
static void begin_entry(void) {
    arena_reset();
    local_error = NULL;
    pending_fail = 0;
}

/* The result of a handler that succeeded: the reply, or the error mm_fail asked for. */
static int64_t finish_entry(int64_t reply) { return pending_fail ? app_error(pending_fail) : reply; }

static int64_t ws_bad_request(void) {
    mm_log_error("micromono: the WebSocket request from the host does not decode");
    return app_error(MM_APP_BAD_REQUEST);
}

/* Handles the WebSocket kinds. Each request starts with `u64 conn` and a u32: the open's path length (then
 * `u32 query_len`, the path, the query), the message's type, or the close's code (then the message or the reason).
 * Without a handler a connection is accepted and its messages and close are ignored, undecoded. */
static int64_t ws_handle(int32_t kind, mm_bytes req) {
    bool open = kind == MM_KIND_WS_OPEN, message = kind == MM_KIND_WS_MESSAGE;
    if (open ? !handle_ws_open : message ? !handle_ws_message : !handle_ws_close) return 0;
    if (req.len < 12) return ws_bad_request();
    uint64_t conn = rd64(req.ptr);
    uint32_t word = rd32(req.ptr + 8);
    mm_bytes rest = mm_bytes_from(req, 12);
    if (open) {
        mm_bytes query_len, path, query;
        if (!take(&rest, 4, &query_len) || !take(&rest, word, &path) || !take(&rest, rd32(query_len.ptr), &query))
            return ws_bad_request();
        int rc = handle_ws_open(conn, path, query);
        return rc < 0 ? app_error(rc) : finish_entry(0);
    }
    if (message) {
        handle_ws_message(conn, (int)word, rest);
    } else {
        if (word > 0xffff) return ws_bad_request(); /* close codes are 16 bits (RFC 6455) */
        handle_ws_close(conn, (int)word, rest);
    }
    return finish_entry(0);
}

__attribute__((export_name("mm_handle"))) int64_t mm_export_handle(int32_t kind, int32_t len) {
    begin_entry();
    size_t n = (uint32_t)len;
    if (n > inbox_cap) return app_error(MM_APP_BAD_REQUEST);
    mm_bytes req = {inbox, n};

    switch (kind) {
    case MM_KIND_HTTP: {
        if (!handle_http) return app_error(MM_APP_NOT_IMPLEMENTED);
        mm_http_request http;
        if (!http_decode(req, &http)) {
            mm_log_error("micromono: the HTTP request from the host does not decode");
            return app_error(MM_APP_BAD_REQUEST);
        }
        mm_http_response res = handle_http(&http);
        if (pending_fail) return app_error(pending_fail);
        int code;
        mm_buf *out = http_finish(&res, &code);
        return out ? reply_of(out) : app_error(code);
    }
    case MM_KIND_CALL: {
        if (!handle_call) return app_error(MM_APP_NOT_IMPLEMENTED);
        mm_buf_clear(&call_reply);
        int rc = handle_call(req, &call_reply);
        if (rc != MM_OK) return app_error(rc);
        if (pending_fail) return app_error(pending_fail);
        if (call_reply.failed) {
            mm_log_error("micromono: out of memory building the call reply");
            return app_error(MM_APP_NO_MEMORY);
        }
        return reply_of(&call_reply);
    }
    case MM_KIND_MESSAGE:
        if (!handle_message) return app_error(MM_APP_NOT_IMPLEMENTED);
        handle_message(req);
        return finish_entry(0);
    case MM_KIND_ALARM: {
        if (!handle_alarm) return app_error(MM_APP_NOT_IMPLEMENTED);
        if (n < 12) return app_error(MM_APP_BAD_REQUEST); /* u64 scheduled_ms, u32 attempt */
        int rc = handle_alarm(rd64(inbox), rd32(inbox + 8));
        return rc != MM_OK ? app_error(rc) : finish_entry(0);
    }
    case MM_KIND_WS_OPEN:
    case MM_KIND_WS_MESSAGE:
    case MM_KIND_WS_CLOSE:
        return ws_handle(kind, req);
    default: /* a kind from a newer ABI: docs/abi.md lets the guest reject it with an error */
        return app_error(MM_APP_NOT_IMPLEMENTED);
    }
}

/* mm_migrate, exported by MM_SCHEMA_VERSION in the service's file (micromono.h). */
int32_t mm_run_migrate(int32_t from) {
    begin_entry();
    if (!handle_migrate) return 0;
    int rc = handle_migrate(from);
    return rc != MM_OK ? rc : pending_fail;
}
