/*
 * {{name}}: a micromono actor in C (made by `micromono new --keyed`).
 *
 * An actor (`kind = "actor"` in services.toml): each key, the last segment of /{{name}}/<key>, has its own
 * instance and its own storage.
 *
 *   GET /{{name}}/<key>   counts a visit to <key>; 200, text/plain: `{{name}} <key>: <visits>`
 *   other methods        405 (with `allow: GET`)
 *
 * The count lives in the actor's key-value storage under "visits", read on every request: storage is the truth,
 * and the instance may be closed and revived at any time. The write commits when the handler returns. A storage
 * failure answers 500 (507 when the actor is over its storage_limit) with the host's message.
 */
#include "micromono.h"

static const mm_bytes visits_key = MM_LIT("visits");

static mm_http_response text(int status, const char *body) {
    mm_http_response res = mm_http_respond(status);
    mm_http_add_header(&res, "content-type", "text/plain");
    mm_buf_append_str(res.body, body);
    return res;
}

mm_http_response handle_http(const mm_http_request *req) {
    if (!mm_bytes_eq(req->method, "GET")) {
        mm_http_response res = text(405, "");
        mm_http_add_header(&res, "allow", "GET");
        return res;
    }
    int64_t visits;
    int rc = mm_kv_get_i64(visits_key, &visits); /* MM_ERR_NOT_FOUND sets visits = 0: a new key */
    if (rc == MM_OK || rc == MM_ERR_NOT_FOUND) rc = mm_kv_put_i64(visits_key, ++visits);
    if (rc != MM_OK) {
        mm_http_response res = text(rc == MM_ERR_STORAGE_FULL ? 507 : 500, "storage error: ");
        mm_buf_append_bytes(res.body, mm_last_error());
        return res;
    }
    mm_http_response res = text(200, "{{name}} ");
    mm_buf_append_bytes(res.body, mm_actor_key());
    mm_buf_append_str(res.body, ": ");
    mm_buf_append_i64(res.body, visits);
    return res;
}
