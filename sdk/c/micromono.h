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
 * with application error MM_APP_NOT_IMPLEMENTED.
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

/* Result of mm_call / mm_send: MM_OK, or one of the host's error codes below (all negative). */
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

/* A short constant name for an MM_ERR_* code ("overloaded", "timeout", ...), for logs and error bodies. */
const char *mm_error_name(int code);

/* ---------------------------------------------------------------------------------------------------------------
 * Logging (one structured `guest.log` event per call; stdout/stderr also work but are unstructured)
 * ------------------------------------------------------------------------------------------------------------- */

void mm_log(int level, const char *msg, size_t len);
void mm_log_debug(const char *msg); /* mm_log with a NUL-terminated message */
void mm_log_info(const char *msg);
void mm_log_warn(const char *msg);
void mm_log_error(const char *msg);
/* printf-style; the message is truncated at 1 KiB. Links wasi-libc's vsnprintf (about 10 KB). */
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
/* Kind MESSAGE. Nothing is returned to the sender. */
void handle_message(mm_bytes msg) __attribute__((weak));

#ifdef __cplusplus
}
#endif

#endif /* MICROMONO_H */
