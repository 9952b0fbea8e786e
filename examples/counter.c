/*
 * counter: a durable counter per name (micromono example actor, C).
 *
 * An actor (`kind = "actor"` in services.toml): each name is a key with its own instance and its own storage.
 *
 *   POST /counter/<name>   adds 1 and answers the new value      200, text/plain, e.g. `3`
 *   GET  /counter/<name>   answers the current value (0 if new)  200, text/plain
 *   other methods          405 (with `allow: GET, POST`)
 *   CALL "incr" / "get"    the same, for other services: call("counter/<name>", "incr") replies e.g. `3`;
 *                          any other payload fails with application error 400.
 *
 * The value lives in storage under the kv key "n" as decimal text, read on every request: storage is the truth,
 * and the instance may be closed and revived at any time. A storage failure answers 500 (507 when the actor is over
 * its storage limit) with the host's message.
 */
#include "micromono.h"

#define ERR_BAD_REQUEST 400
#define ERR_STORAGE 500

static const mm_bytes value_key = MM_LIT("n");

/* Reads the counter, adding `delta` and storing the result when delta is not 0. MM_OK or the storage's error. */
static int counter_add(int64_t delta, int64_t *value) {
    int rc = mm_kv_get_i64(value_key, value);
    if (rc != MM_OK && rc != MM_ERR_NOT_FOUND) return rc; /* not found: a new counter, at 0 */
    if (delta == 0) return MM_OK;
    *value += delta;
    return mm_kv_put_i64(value_key, *value);
}

static mm_http_response text(int status, mm_bytes body) {
    mm_http_response res = mm_http_respond(status);
    mm_http_add_header(&res, "content-type", "text/plain");
    mm_buf_append_bytes(res.body, body);
    return res;
}

mm_http_response handle_http(const mm_http_request *req) {
    bool post = mm_bytes_eq(req->method, "POST");
    if (!post && !mm_bytes_eq(req->method, "GET")) {
        mm_http_response res = text(405, MM_LIT("method not allowed"));
        mm_http_add_header(&res, "allow", "GET, POST");
        return res;
    }
    int64_t value;
    int rc = counter_add(post ? 1 : 0, &value);
    if (rc != MM_OK) {
        mm_http_response res = text(rc == MM_ERR_STORAGE_FULL ? 507 : 500, MM_LIT("storage error: "));
        mm_buf_append_str(res.body, mm_error_name(rc));
        mm_buf_append_str(res.body, ": ");
        mm_buf_append_bytes(res.body, mm_last_error());
        return res;
    }
    mm_http_response res = text(200, MM_LIT(""));
    mm_buf_append_i64(res.body, value);
    return res;
}

int handle_call(mm_bytes req, mm_buf *reply) {
    bool incr = mm_bytes_eq(req, "incr");
    if (!incr && !mm_bytes_eq(req, "get")) return ERR_BAD_REQUEST;
    int64_t value;
    int rc = counter_add(incr ? 1 : 0, &value);
    if (rc != MM_OK) {
        mm_log_error(mm_last_error().ptr); /* the host's message; the caller only sees MM_ERR_APP */
        return ERR_STORAGE;
    }
    mm_buf_append_i64(reply, value);
    return MM_OK;
}
