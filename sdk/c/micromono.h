/*
 * micromono.h: the C SDK for micromono services (guest ABI version 2).
 *
 * This header and micromono.c own the guest side of docs/abi.md for C: the `mm_abi_version`, `mm_inbox` and
 * `mm_handle` exports, the `micromono.*` host imports, request decoding and reply encoding. A service author
 * includes this header, defines one or more handler functions and never touches an ABI pointer:
 *
 *     #include "micromono.h"
 *
 *     mm_http_response handle_http(const mm_http_request *req) {        // kind HTTP    (routes)
 *         mm_http_response res = mm_http_respond(200);
 *         mm_http_add_header(&res, "content-type", "text/plain");
 *         mm_buf_append_str(res.body, "hello ");
 *         mm_buf_append_bytes(res.body, req->path);
 *         return res;
 *     }
 *     int handle_call(mm_bytes req, mm_buf *reply) {                      // kind CALL    (micromono.call)
 *         mm_buf_append_bytes(reply, req);
 *         return MM_OK;                    // or an application error code > 0, e.g. return 404;
 *     }
 *     void handle_message(mm_bytes msg) { (void)msg; }                    // kind MESSAGE (micromono.send)
 *
 * The handlers are weak symbols: define the ones the service needs. A request of a kind with no handler fails
 * with application error MM_APP_NOT_IMPLEMENTED, except the WebSocket kinds (below): without a handler, a
 * connection is accepted and its messages and close are ignored.
 *
 * Actors (a service declared `kind = "actor"`, docs/abi.md "Actors") also get durable per-key storage: a key-value
 * store (mm_kv_*), an SQL database (mm_sql_exec), one alarm (mm_alarm_*, handled by handle_alarm) and a storage
 * schema version with its migration (MM_SCHEMA_VERSION, handle_migrate):
 *
 *     MM_SCHEMA_VERSION(1);                                               // exports mm_schema_version/mm_migrate
 *     int handle_migrate(int from) {                                      // 0 -> 1: create the table
 *         return from < 1 ? mm_sql_exec("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", NULL, 0, NULL) : MM_OK;
 *     }
 *     int handle_call(mm_bytes req, mm_buf *reply) {
 *         int64_t n;
 *         int rc = mm_kv_get_i64(MM_LIT("n"), &n);                        // MM_ERR_NOT_FOUND sets n = 0
 *         if (rc != MM_OK && rc != MM_ERR_NOT_FOUND) return 500;           // mm_last_error() says why
 *         if (mm_kv_put_i64(MM_LIT("n"), n + 1) != MM_OK) return 500;
 *         mm_buf_append_i64(reply, n + 1);
 *         return MM_OK;
 *     }
 *
 * Every write of one request (and of mm_migrate before it) commits when the handler returns and is rolled back
 * if it fails: a trap, or an application error (a handle_call code, mm_fail, mm_http_fail). Memory is only a
 * cache: an idle actor is closed and later revived from its storage.
 *
 * An actor service with `websocket = true` also has WebSocket clients (docs/abi.md "WebSockets", docs/stream.md):
 * the daemon holds the connections and hands the actor their opens, messages and closes, in its one-at-a-time
 * order; the actor answers with mm_ws_send (one connection) and mm_ws_publish (all of them, numbered and
 * resumable):
 *
 *     int handle_ws_open(uint64_t conn, mm_bytes path, mm_bytes query) {   // kind WS_OPEN: < 0 refuses
 *         return mm_ws_send_text(conn, "welcome") == MM_OK ? 0 : -1;
 *     }
 *     void handle_ws_message(uint64_t conn, int type, mm_bytes data) {    // kind WS_MESSAGE
 *         if (type == MM_WS_TEXT) mm_ws_publish(MM_WS_TEXT, data, MM_LIT(""));
 *     }
 *
 * Build (Debian clang 14 + wasi-libc), as a WASI reactor:
 *
 *     clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -I sdk/c \
 *           -o svc.wasm svc.c sdk/c/micromono.c
 *
 * Lifetimes. Everything the SDK hands out (request fields, call replies, mm_last_error text, mm_alloc memory)
 * is valid for the rest of the current request; the SDK reclaims it when the guest is next entered, which is also
 * how long the reply stays intact for the host (docs/abi.md "Replies"). Keep longer-lived data in your own
 * globals: the instance lives across requests (docs/abi.md "Resources and limits"; stateful services run with
 * `instances = 1`).
 *
 * Memory. The SDK allocates with wasi-libc's malloc. When a buffer cannot grow, the append returns false and sets
 * the buffer's sticky `failed` flag. If that happens to the reply being built, the SDK fails the request with
 * MM_APP_NO_MEMORY instead of trapping (a trap would discard the instance and any state it holds).
 *
 * Threads: none. A handler is never re-entered (the host serves re-entrant chains with another instance).
 */
#ifndef MICROMONO_H
#define MICROMONO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------------------------
 * Constants from docs/abi.md
 * ------------------------------------------------------------------------------------------------------------- */

#define MM_ABI_VERSION 2

/* Request kinds (the `kind` argument of mm_handle). */
#define MM_KIND_HTTP 1
#define MM_KIND_CALL 2
#define MM_KIND_MESSAGE 3
#define MM_KIND_ALARM 4      /* an actor's alarm is due (handle_alarm) */
#define MM_KIND_WS_OPEN 5    /* a WebSocket client connected to this actor (handle_ws_open) */
#define MM_KIND_WS_MESSAGE 6 /* a client's WebSocket message (handle_ws_message) */
#define MM_KIND_WS_CLOSE 7   /* a WebSocket connection closed (handle_ws_close) */

/* Result of mm_call, mm_send and the actor functions: MM_OK, or one of the host's error codes below (all
 * negative). mm_last_error() gives the message that goes with the last one. */
#define MM_OK 0
#define MM_ERR_UNKNOWN_TARGET (-1) /* no service of that name is loaded */
#define MM_ERR_FORBIDDEN (-2)      /* the target is not in this service's `calls` allowlist */
#define MM_ERR_OVERLOADED (-3)     /* the callee has no free instance, or its mailbox is full */
#define MM_ERR_TRAP (-4)           /* the callee trapped or broke the ABI */
#define MM_ERR_TIMEOUT (-5)        /* the callee exceeded its deadline */
#define MM_ERR_DEPTH (-6)          /* the call chain is deeper than max_call_depth */
#define MM_ERR_APP (-7)            /* the callee returned an application error */
#define MM_ERR_TOO_LARGE (-8)      /* the request does not fit the callee (or the reply does not fit us) */
#define MM_ERR_NO_REPLY (-9)       /* take_reply without a held reply (the SDK handles take_reply for you) */
#define MM_ERR_UNAVAILABLE (-10)   /* the callee is stopping */
#define MM_ERR_NOT_FOUND (-11)     /* mm_kv_get, mm_kv_get_i64, mm_alarm_get: nothing stored */
#define MM_ERR_STORAGE_FULL (-12)  /* the write would take the actor past its storage_limit; nothing was written */
#define MM_ERR_SQL (-13)           /* mm_sql_exec: the statement failed or is not allowed (SQLite's message) */
#define MM_ERR_NOT_ACTOR (-14)     /* a storage or alarm function in a service that is not kind = "actor" */
#define MM_ERR_INVALID (-15)       /* a key or value over its bound, bad list options or SQL parameters */

/* Application error codes the SDK itself reports from mm_handle (a handler may use any code > 0). The values
 * follow HTTP so that they read naturally in the host's "application error <code>" messages. */
#define MM_APP_BAD_REQUEST 400     /* the host sent an HTTP request that does not decode */
#define MM_APP_INTERNAL 500        /* the handler built an invalid reply (for example a header over 64 KiB) */
#define MM_APP_NOT_IMPLEMENTED 501 /* no handler is defined for this kind of request */
#define MM_APP_NO_MEMORY 507       /* the SDK could not allocate memory for the reply */

/* Log levels for mm_log (docs/abi.md `log`). */
#define MM_LOG_DEBUG 0
#define MM_LOG_INFO 1
#define MM_LOG_WARN 2
#define MM_LOG_ERROR 3

/* ---------------------------------------------------------------------------------------------------------------
 * Byte strings and buffers
 * ------------------------------------------------------------------------------------------------------------- */

/* A borrowed, read-only byte string. Not NUL-terminated unless documented otherwise; `ptr` is NULL for "absent"
 * (for example a missing header), which is distinct from an empty string. */
typedef struct mm_bytes {
    const char *ptr;
    size_t len;
} mm_bytes;

/* mm_bytes from a string literal, without a strlen at run time. */
#define MM_LIT(s) ((mm_bytes){(s), sizeof(s) - 1})

mm_bytes mm_str(const char *s);                            /* mm_bytes view of a NUL-terminated string */
bool mm_bytes_eq(mm_bytes a, const char *s);               /* a equals the NUL-terminated string s */
bool mm_bytes_starts_with(mm_bytes a, const char *prefix); /* a begins with prefix */
mm_bytes mm_bytes_from(mm_bytes a, size_t offset);         /* a without its first `offset` bytes (clamped) */
char *mm_cstr(mm_bytes a);                                 /* NUL-terminated copy in mm_alloc memory, or NULL */
/* Parses all of `a` as a decimal int64 ("-" allowed; no "+", spaces or other bytes). False when it is not one. */
bool mm_parse_i64(mm_bytes a, int64_t *out);

/* A growable byte buffer. A zero-initialised mm_buf is a valid empty buffer. Appends return false (and set
 * `failed`, which stays set until mm_buf_clear) when memory runs out; the buffer keeps what it had. */
typedef struct mm_buf {
    char *ptr;
    size_t len;
    size_t cap;
    bool failed;
} mm_buf;

bool mm_buf_append(mm_buf *b, const void *data, size_t len);
bool mm_buf_append_str(mm_buf *b, const char *s);
bool mm_buf_append_bytes(mm_buf *b, mm_bytes s);
bool mm_buf_append_byte(mm_buf *b, char c);
bool mm_buf_append_u64(mm_buf *b, uint64_t v); /* decimal */
bool mm_buf_append_i64(mm_buf *b, int64_t v);  /* decimal, with '-' when negative */
/* Appends `data` as a JSON string literal: quoted, with '"', '\\' and control characters escaped. Bytes >= 0x80 are
 * copied as they are, so pass UTF-8 to get valid JSON. */
bool mm_buf_append_json_string(mm_buf *b, const void *data, size_t len);
/* printf into the buffer. Links wasi-libc's vsnprintf (about 10 KB), so the plain appends above are cheaper. */
bool mm_buf_printf(mm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mm_buf_clear(mm_buf *b); /* len = 0 and failed = false; keeps the memory */
void mm_buf_free(mm_buf *b);  /* releases the memory; the buffer is empty and usable again */
/* The contents as mm_bytes (borrowed: valid until the buffer is next modified). */
static inline mm_bytes mm_buf_bytes(const mm_buf *b) { return (mm_bytes){b->ptr, b->len}; }

/* Per-request scratch memory, 8-byte aligned, released automatically when the guest is next entered. NULL when
 * out of memory. Do not free it. */
void *mm_alloc(size_t size);

/* ---------------------------------------------------------------------------------------------------------------
 * HTTP (kind MM_KIND_HTTP)
 * ------------------------------------------------------------------------------------------------------------- */

/* A decoded HTTP request. All fields point into the request the host wrote, so they are valid until the handler
 * returns. `path` is raw (percent-encoded, starts with '/'); `query` has no '?'. Use mm_http_header to read
 * headers. */
typedef struct mm_http_request {
    mm_bytes method;
    mm_bytes path;
    mm_bytes query;
    mm_bytes body;
    size_t header_count;
    mm_bytes headers; /* the header lines as received (docs/abi.md); read them with the functions below */
} mm_http_request;

/* The value of the first header called `name` (compared ASCII-case-insensitively; names arrive as the client
 * wrote them), without the spaces or tabs around it. `.ptr` is NULL when there is no such header. */
mm_bytes mm_http_header(const mm_http_request *req, const char *name);

/* Iterates over all headers in order: start with `size_t pos = 0` and loop while it returns true. Values come
 * without the spaces or tabs around them. */
bool mm_http_header_next(const mm_http_request *req, size_t *pos, mm_bytes *name, mm_bytes *value);

/* The response a handle_http returns. There is one response per request: mm_http_respond resets the SDK-owned
 * buffers, so build exactly one and return it. Append the body to `*body`, or use mm_http_set_body[_ref]. */
typedef struct mm_http_response {
    int status;        /* 100-599; anything else makes the host answer 500 */
    mm_buf *body;      /* the body, SDK-owned */
    mm_buf *headers;   /* encoded header entries, SDK-owned; use mm_http_add_header */
    size_t header_count;
    mm_bytes body_ref; /* set by mm_http_set_body_ref; sent instead of *body when .ptr != NULL */
    bool invalid;      /* set when a header could not be encoded; the request then fails with MM_APP_INTERNAL */
} mm_http_response;

mm_http_response mm_http_respond(int status);
/* A response with `content-type: application/json` and `json` (a NUL-terminated string) as its body. */
mm_http_response mm_http_json(int status, const char *json);
/* Adds a header (names and values of at most 65535 bytes; the host drops content-length, connection, date and
 * transfer-encoding, which it writes itself). Headers may be added before or after the body. */
void mm_http_add_header(mm_http_response *res, const char *name, const char *value);
void mm_http_add_header_bytes(mm_http_response *res, mm_bytes name, mm_bytes value);
/* Replaces the body with a copy of `data`. */
void mm_http_set_body(mm_http_response *res, const void *data, size_t len);
/* Uses `data` as the body without copying it now. It must stay valid until the handler returns (request data,
 * string literals, mm_alloc memory and globals qualify); the SDK copies it once into the reply. */
void mm_http_set_body_ref(mm_http_response *res, const void *data, size_t len);
/* `return mm_http_fail(code);` fails the request with application error `code` (> 0) instead of answering: the
 * host answers 500 naming the code, and an actor's writes of this request are rolled back. Same as mm_fail. */
mm_http_response mm_http_fail(int code);

/* ---------------------------------------------------------------------------------------------------------------
 * Calling other services
 * ------------------------------------------------------------------------------------------------------------- */

/* Calls service `target` (which must be in this service's `calls` allowlist) and waits for the reply.
 * Returns MM_OK and sets *reply (if reply is not NULL), or returns a negative MM_ERR_* code; mm_last_error()
 * then says why. The reply lives in per-request memory: valid, and NUL-terminated at reply->ptr[reply->len]
 * for convenience, until the handler returns. Replies of any size are handled (the SDK fetches ones that do not
 * fit its buffer with take_reply). */
int mm_call(const char *target, const void *req, size_t req_len, mm_bytes *reply);

/* Queues `msg` for `target` (allowlisted like mm_call), which handles it later as kind MESSAGE. Returns MM_OK,
 * or a negative MM_ERR_* code (MM_ERR_OVERLOADED when its mailbox is full). Delivery failures after queueing are
 * never reported back. */
int mm_send(const char *target, const void *msg, size_t msg_len);

/* The message of the last failed mm_call/mm_send, NUL-terminated (ptr is never NULL; len 0 if there was none).
 * Valid until the handler returns. */
mm_bytes mm_last_error(void);

/* The length of a W3C traceparent value, "00-<trace id>-<span id>-<flags>". */
#define MM_TRACEPARENT_LEN 55

/* The current request's trace context (docs/tracing.md) as a W3C traceparent value, NUL-terminated: the trace id
 * and the span the daemon opened for this request, call or message, to name as the parent of what the service
 * does outside. `.ptr` is NULL when the daemon's tracing is off (an incoming HTTP request's own `traceparent`
 * header is still in its headers). Valid until the handler returns. A service that never calls it does not
 * import micromono.trace_context. */
mm_bytes mm_trace_context(void);

/* A short constant name for an MM_ERR_* code ("overloaded", "timeout", ...), for logs and error bodies. */
const char *mm_error_name(int code);

/* Fails the current request with application error `code` (> 0; 0 or less means MM_APP_INTERNAL) once the
 * handler returns, whatever the handler returns: the reply is discarded, a caller sees MM_ERR_APP, HTTP ingress
 * answers 500, a message counts as failed, an alarm is retried, and an actor's writes of this request are rolled
 * back. For handlers that return nothing (handle_message) or a response (handle_http, see mm_http_fail). */
void mm_fail(int code);

/* ---------------------------------------------------------------------------------------------------------------
 * Actors (docs/abi.md "Actors"): key, key-value storage, SQL, alarm, schema version
 *
 * These work in a service declared `kind = "actor"`; elsewhere they return MM_ERR_NOT_ACTOR. Every write is part of
 * the current request's transaction (committed when the handler returns, rolled back when it fails); reads see the
 * request's own writes. Everything they hand out lives in per-request memory, valid until the handler returns.
 * ------------------------------------------------------------------------------------------------------------- */

/* This actor's key (from its route `/counter/{key}` or its caller's target "counter/<key>"), NUL-terminated.
 * `.ptr` is NULL when the service is not an actor. */
mm_bytes mm_actor_key(void);

/* Reads the value stored under `key` (1 to 2048 bytes) into *value: MM_OK, MM_ERR_NOT_FOUND when there is none,
 * or another negative code. The value may be of any size and is NUL-terminated at value->ptr[value->len] for
 * convenience (it may contain NUL bytes itself). `value` may be NULL to test whether the key exists. */
int mm_kv_get(mm_bytes key, mm_bytes *value);
/* Stores `value` (may be empty) under `key`: MM_OK, MM_ERR_STORAGE_FULL (nothing written) or MM_ERR_INVALID. */
int mm_kv_put(mm_bytes key, mm_bytes value);
/* Deletes `key`: 1 when a value was deleted, 0 when there was none, or a negative code. */
int mm_kv_delete(mm_bytes key);

/* Integers stored as decimal text ("42", "-7"), so they read well in any tool. mm_kv_get_i64 returns MM_OK,
 * MM_ERR_NOT_FOUND with *value set to 0, MM_ERR_INVALID when the stored value is not a decimal int64, or another
 * negative code. */
int mm_kv_get_i64(mm_bytes key, int64_t *value);
int mm_kv_put_i64(mm_bytes key, int64_t value);

/* Which entries mm_kv_list returns. A zero-initialised struct (or NULL) lists every key; an empty byte string
 * means "no bound". */
typedef struct mm_kv_list_options {
    mm_bytes prefix; /* only keys that start with it */
    mm_bytes start;  /* only keys >= start */
    mm_bytes end;    /* only keys < end */
    uint32_t limit;  /* at most this many entries; 0: no limit */
    bool reverse;    /* largest key first */
} mm_kv_list_options;

/* The entries mm_kv_list found, read with mm_kv_next. */
typedef struct mm_kv_iter {
    size_t count;     /* number of entries */
    size_t remaining; /* entries mm_kv_next has not returned yet */
    const char *pos;  /* internal: the next entry */
} mm_kv_iter;

/* Lists entries in key order (bytewise), filtered by `opts` (NULL: all): MM_OK with *it ready for mm_kv_next,
 * or a negative code (MM_ERR_INVALID for bad options).
 *
 *     mm_kv_iter it;
 *     mm_bytes k, v;
 *     if (mm_kv_list(&(mm_kv_list_options){.prefix = MM_LIT("user/"), .limit = 10}, &it) == MM_OK)
 *         while (mm_kv_next(&it, &k, &v)) { ... }
 */
int mm_kv_list(const mm_kv_list_options *opts, mm_kv_iter *it);
/* The next entry (key and value are not NUL-terminated); false after the last. */
bool mm_kv_next(mm_kv_iter *it, mm_bytes *key, mm_bytes *value);

/* SQL values: statement parameters and result cells (SQLite's five storage classes). */
#define MM_SQL_NULL 0
#define MM_SQL_INT 1
#define MM_SQL_REAL 2
#define MM_SQL_TEXT 3
#define MM_SQL_BLOB 4

typedef struct mm_sql_value {
    int type; /* MM_SQL_NULL, MM_SQL_INT, MM_SQL_REAL, MM_SQL_TEXT or MM_SQL_BLOB */
    union {
        int64_t integer; /* MM_SQL_INT */
        double real;     /* MM_SQL_REAL */
        mm_bytes bytes;  /* MM_SQL_TEXT (UTF-8) and MM_SQL_BLOB */
    };
} mm_sql_value;

/* Parameter constructors. Text and blobs are borrowed: keep them valid until mm_sql_exec returns. */
static inline mm_sql_value mm_sql_null(void) { return (mm_sql_value){.type = MM_SQL_NULL}; }
static inline mm_sql_value mm_sql_int(int64_t v) { return (mm_sql_value){.type = MM_SQL_INT, .integer = v}; }
static inline mm_sql_value mm_sql_real(double v) { return (mm_sql_value){.type = MM_SQL_REAL, .real = v}; }
static inline mm_sql_value mm_sql_text(const char *s) {
    return (mm_sql_value){.type = MM_SQL_TEXT, .bytes = mm_str(s)};
}
static inline mm_sql_value mm_sql_text_bytes(mm_bytes s) { return (mm_sql_value){.type = MM_SQL_TEXT, .bytes = s}; }
static inline mm_sql_value mm_sql_blob(const void *data, size_t len) {
    return (mm_sql_value){.type = MM_SQL_BLOB, .bytes = {data, len}};
}

/* The result of a statement. Rows are read with the accessors below. */
typedef struct mm_sql_result {
    size_t columns;             /* columns per row */
    size_t rows;                /* rows returned */
    uint32_t changes;           /* rows the statement inserted, updated or deleted */
    int64_t last_insert_rowid;  /* the rowid of the last INSERT on this actor's database */
    const mm_bytes *names;      /* the column names, `columns` of them */
    const mm_sql_value *values; /* the cells, row after row (`rows * columns` of them) */
} mm_sql_result;

/* Runs one SQL statement (SQLite's dialect) on this actor's own database, binding `params[0..n)` to its `?`
 * placeholders. MM_OK with *out filled (out may be NULL when the rows do not matter), or a negative code:
 * MM_ERR_SQL when the statement fails or is not allowed (several statements, ATTACH, BEGIN/COMMIT/SAVEPOINT,
 * PRAGMA), with SQLite's message in mm_last_error(). Texts, blobs and column names in *out are NUL-terminated
 * for convenience.
 *
 *     mm_sql_result r;
 *     int rc = mm_sql_exec("SELECT id, text FROM messages WHERE id > ?", MM_SQL_PARAMS(mm_sql_int(since)), &r);
 *     for (size_t i = 0; rc == MM_OK && i < mm_sql_rows(&r); i++)
 *         use(mm_sql_get_int(&r, i, 0), mm_sql_get_text(&r, i, 1));
 */
int mm_sql_exec(const char *sql, const mm_sql_value *params, size_t n, mm_sql_result *out);

/* `params, n` for mm_sql_exec from a list of values: MM_SQL_PARAMS(mm_sql_int(1), mm_sql_text("a")). */
#define MM_SQL_PARAMS(...)                                                                                             \
    (const mm_sql_value[]){__VA_ARGS__}, sizeof((const mm_sql_value[]){__VA_ARGS__}) / sizeof(mm_sql_value)

static inline size_t mm_sql_rows(const mm_sql_result *r) { return r->rows; }
static inline size_t mm_sql_columns(const mm_sql_result *r) { return r->columns; }
/* The cell at (row, col); a NULL cell when either is out of range. Never NULL itself. */
const mm_sql_value *mm_sql_get(const mm_sql_result *r, size_t row, size_t col);
/* An INTEGER cell's value (a REAL one truncated); 0 for NULL, TEXT, BLOB and out-of-range cells. */
int64_t mm_sql_get_int(const mm_sql_result *r, size_t row, size_t col);
/* A REAL cell's value (an INTEGER one converted); 0.0 for NULL, TEXT, BLOB and out-of-range cells. */
double mm_sql_get_real(const mm_sql_result *r, size_t row, size_t col);
/* A TEXT or BLOB cell's bytes (NUL-terminated); `.ptr` NULL for the other types and out-of-range cells. */
mm_bytes mm_sql_get_text(const mm_sql_result *r, size_t row, size_t col);
/* Whether the cell is NULL (or out of range). */
bool mm_sql_is_null(const mm_sql_result *r, size_t row, size_t col);

/* The alarm: at most one per actor, a wall-clock time in milliseconds since the Unix epoch (>= 0: alarm_get
 * reports "none" as -1), usually mm_now_ms() plus a delay; a time in the past fires at once. When it is due the
 * actor gets handle_alarm. mm_alarm_set replaces it (MM_OK or a negative code); mm_alarm_get reads it (MM_OK with
 * *at_ms, MM_ERR_NOT_FOUND when none is set, or a negative code); mm_alarm_delete clears it. Setting and clearing
 * are part of the request's transaction. */
int mm_alarm_set(int64_t at_ms);
int mm_alarm_get(int64_t *at_ms);
int mm_alarm_delete(void);

/* The wall clock in milliseconds since the Unix epoch (WASI clock_time_get, CLOCK_REALTIME), for alarm times. */
int64_t mm_now_ms(void);

/* Declares the storage schema version this build expects (an int > 0), at file scope: MM_SCHEMA_VERSION(2);
 * It exports `mm_schema_version` and `mm_migrate`. Before the first request an actor handles with this build,
 * when the actor's stored version is lower, the host calls mm_migrate, which runs handle_migrate(from) if the
 * service defines it (in that request's transaction) and otherwise succeeds: a version bump needs no handler
 * when there is nothing to convert. Without MM_SCHEMA_VERSION the version is 0 and neither is exported. */
#define MM_SCHEMA_VERSION(n)                                                                                   \
    __attribute__((export_name("mm_schema_version"))) int32_t mm_export_schema_version(void) { return (n); }  \
    __attribute__((export_name("mm_migrate"))) int32_t mm_export_migrate(int32_t from) {                     \
        return mm_run_migrate(from);                                                                           \
    }                                                                                                          \
    int32_t mm_export_migrate(int32_t from) /* so that `MM_SCHEMA_VERSION(1);` takes its semicolon */

int32_t mm_export_schema_version(void);
int32_t mm_export_migrate(int32_t from);
int32_t mm_run_migrate(int32_t from); /* internal: what MM_SCHEMA_VERSION's mm_migrate runs */

/* ---------------------------------------------------------------------------------------------------------------
 * WebSockets (actors with `websocket = true`; docs/abi.md "WebSockets", docs/stream.md)
 *
 * The daemon holds the connections; the actor sees each one as a u64 id, unique in the daemon's life, in
 * handle_ws_open, handle_ws_message and handle_ws_close (below), and answers with these functions. They may be
 * called from any handler of the actor (an HTTP request or a call may publish too), for any of its connections.
 *
 * What they send leaves through the output gate: once the current request's writes are durable, and not at all
 * if the request fails (a trap, an application error, mm_fail, a refused open). So MM_OK means "queued with this
 * request", not "delivered". Messages sent or published while handling an open are delivered after the open (and
 * after the messages a resuming client missed). The data is copied during the call: any buffer will do.
 *
 * Each returns MM_OK or a negative code: MM_ERR_NOT_FOUND (no such connection of this actor: it closed
 * meanwhile, which is normal), MM_ERR_INVALID (bad arguments, see each function) or MM_ERR_NOT_ACTOR;
 * mm_last_error() says why.
 * ------------------------------------------------------------------------------------------------------------- */

/* Message types (the `type` of handle_ws_message, mm_ws_send and mm_ws_publish). */
#define MM_WS_TEXT 1   /* UTF-8 text (the daemon closes a client that sends text that is not UTF-8 with 1007) */
#define MM_WS_BINARY 2 /* bytes */

/* Close codes (the `code` of mm_ws_close and handle_ws_close; docs/stream.md "Close codes"). mm_ws_close takes
 * MM_WS_CLOSE_NORMAL or an application code from 3000 to 4999; handle_ws_close also reports the daemon's. */
#define MM_WS_CLOSE_NORMAL 1000
#define MM_WS_CLOSE_LOST 1006 /* handle_ws_close: the connection was lost without a close frame */

/* Sends `data` as one message of `type` (MM_WS_TEXT or MM_WS_BINARY) to connection `conn` only. It is not numbered
 * and not kept for resuming (docs/stream.md): a text message reaches the client wrapped, as the frame
 * {"data": "<the text>"}, a binary one after 8 zero bytes (the sdk/ clients unwrap both). MM_ERR_INVALID for
 * another type, or text that is not UTF-8. */
int mm_ws_send(uint64_t conn, int type, mm_bytes data);
/* mm_ws_send of a NUL-terminated text. */
int mm_ws_send_text(uint64_t conn, const char *text);

/* Publishes `data` as one message of `type` to every connection of this actor or, when `tag` is not empty, to
 * those tagged with it (mm_ws_tag). The daemon numbers it in the actor's stream and keeps it for clients that
 * resume (`?since=`): a text message reaches clients as the frame {"seq": N, "data": "<the text>"}, a binary one
 * as 8 bytes of seq then the bytes (docs/stream.md), so publish the payload itself, not a JSON envelope.
 * MM_ERR_INVALID for another type, text that is not UTF-8, or a tag over 64 bytes. */
int mm_ws_publish(int type, mm_bytes data, mm_bytes tag);
/* mm_ws_publish of a NUL-terminated text to every connection. */
int mm_ws_publish_text(const char *text);

/* Closes connection `conn` with `code` (MM_WS_CLOSE_NORMAL, or 3000 to 4999) and `reason` (UTF-8, at most 123
 * bytes; may be empty). handle_ws_close follows for it later, as for any close. MM_ERR_NOT_FOUND when it is
 * closed already; MM_ERR_INVALID for another code or a longer reason. */
int mm_ws_close(uint64_t conn, int code, mm_bytes reason);

/* Adds `tag` (1 to 64 bytes) to connection `conn`, for mm_ws_publish. A connection may carry several tags; they
 * last as long as it does (the daemon keeps them, not the actor's memory). MM_ERR_NOT_FOUND or MM_ERR_INVALID. */
int mm_ws_tag(uint64_t conn, mm_bytes tag);

/* ---------------------------------------------------------------------------------------------------------------
 * Logging (one structured `guest.log` event per call; stdout/stderr also work but are unstructured)
 * ------------------------------------------------------------------------------------------------------------- */

void mm_log(int level, const char *msg, size_t len);
void mm_log_debug(const char *msg); /* mm_log with a NUL-terminated message */
void mm_log_info(const char *msg);
void mm_log_warn(const char *msg);
void mm_log_error(const char *msg);
/* printf-style, any length (over 1 KiB it is formatted on the heap; the daemon cuts lines over its own limit).
 * Links wasi-libc's vsnprintf (about 10 KB). */
void mm_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------------------------------
 * Handlers the service defines (all optional; see the top of this file)
 * ------------------------------------------------------------------------------------------------------------- */

/* Kind HTTP. Return the response built with mm_http_respond/mm_http_json. */
mm_http_response handle_http(const mm_http_request *req) __attribute__((weak));
/* Kind CALL. Append the reply to *reply (SDK-owned, empty on entry) and return MM_OK, or return an application
 * error code > 0 (the caller sees MM_ERR_APP; the host logs the code). A negative return is treated as its
 * absolute value. */
int handle_call(mm_bytes req, mm_buf *reply) __attribute__((weak));
/* Kind MESSAGE. Nothing is returned to the sender; mm_fail makes the message count as failed. */
void handle_message(mm_bytes msg) __attribute__((weak));
/* Kind ALARM (actors): the alarm set for `scheduled_ms` is due; `attempt` is 1 the first time. Return MM_OK, or
 * an error code (> 0) to roll back and have it retried later with backoff (up to 10 attempts). The alarm is cleared
 * when the handler succeeds, unless it set a new one with mm_alarm_set. */
int handle_alarm(uint64_t scheduled_ms, uint32_t attempt) __attribute__((weak));
/* Kind WS_OPEN (actors with `websocket = true`): client `conn` connected on `path` (raw, percent-encoded, starts
 * with '/'), with `query` (without '?', and without the `since` the daemon handles itself). Return 0 (any value
 * >= 0) to accept it, or a negative value to refuse it: the client is closed with 1008, and everything this
 * request wrote or sent is dropped (mm_fail refuses too). `path` and `query` point into the request: valid until
 * the handler returns, not NUL-terminated. Without this handler every connection is accepted. */
int handle_ws_open(uint64_t conn, mm_bytes path, mm_bytes query) __attribute__((weak));
/* Kind WS_MESSAGE: client `conn` sent a message of `type` (MM_WS_TEXT, whose data the daemon checked is UTF-8, or
 * MM_WS_BINARY). `data` points into the request: valid until the handler returns, not NUL-terminated (text may
 * contain NUL bytes). mm_fail fails the message: its writes are rolled back and nothing it sent leaves. Without
 * this handler messages are ignored. */
void handle_ws_message(uint64_t conn, int type, mm_bytes data) __attribute__((weak));
/* Kind WS_CLOSE: connection `conn` is gone, closed with `code` (by the client, by mm_ws_close, or by the daemon:
 * docs/stream.md "Close codes"; MM_WS_CLOSE_LOST when it was lost) and `reason` (valid until the handler returns,
 * possibly empty). Sending to it now fails with MM_ERR_NOT_FOUND. Without this handler closes are ignored. */
void handle_ws_close(uint64_t conn, int code, mm_bytes reason) __attribute__((weak));
/* Migration (actors, with MM_SCHEMA_VERSION): bring storage written by schema version `from` up to this build's.
 * Return MM_OK when done; anything else (or a trap) fails the request and leaves the version as it was. */
int handle_migrate(int from) __attribute__((weak));

#ifdef __cplusplus
}
#endif

#endif /* MICROMONO_H */
