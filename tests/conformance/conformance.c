/*
 * conformance: the SDK conformance service in C (tests/conformance/README.md is its specification; the same service
 * exists in Zig, Rust and AssemblyScript, and tests/test_conformance.py expects the same answers from each).
 *
 * An actor with WebSockets, on routes "/conf/{key}" and "/conf/{key}/..." (the README has its manifest).
 */
#include "micromono.h"

#define LANG "c"

/* An answer with an empty body: no content-type (the README's last rule). */
static mm_http_response empty(int status) { return mm_http_respond(status); }

static mm_http_response failed(const char *what, int code) {
    mm_http_response res = mm_http_respond(502);
    mm_buf_append_str(res.body, what);
    mm_buf_append_str(res.body, " failed: ");
    mm_buf_append_i64(res.body, code);
    return res;
}

static mm_http_response echo(const mm_http_request *req) {
    mm_http_response res = mm_http_respond(200);
    if (req->body.len) {
        mm_bytes type = mm_http_header(req, "content-type");
        mm_http_add_header_bytes(&res, MM_LIT("content-type"), type.ptr ? type : MM_LIT("application/octet-stream"));
    }
    mm_http_add_header(&res, "x-conformance", LANG);
    mm_http_set_body_ref(&res, req->body.ptr, req->body.len);
    return res;
}

static mm_http_response call_peer(const mm_http_request *req) {
    mm_bytes reply;
    int rc = mm_call("peer", req->body.ptr, req->body.len, &reply);
    if (rc != MM_OK) return failed("call", rc);
    mm_http_response res = mm_http_respond(200);
    mm_http_set_body_ref(&res, reply.ptr, reply.len);
    return res;
}

static mm_http_response send_self(const mm_http_request *req) {
    mm_buf target = {0};
    mm_buf_append_str(&target, "conformance/");
    mm_buf_append_bytes(&target, mm_actor_key());
    mm_buf_append_byte(&target, '\0');
    int rc = target.failed ? MM_ERR_INVALID : mm_send(target.ptr, req->body.ptr, req->body.len);
    mm_buf_free(&target);
    return rc == MM_OK ? empty(202) : failed("send", rc);
}

static mm_http_response kv(const mm_http_request *req, mm_bytes name) {
    if (mm_bytes_eq(req->method, "PUT")) {
        int rc = mm_kv_put(name, req->body);
        if (rc != MM_OK) return mm_http_fail(500); /* not part of the spec: a storage failure */
        return empty(204);
    }
    if (mm_bytes_eq(req->method, "GET")) {
        mm_bytes value;
        int rc = mm_kv_get(name, &value);
        if (rc == MM_ERR_NOT_FOUND) return empty(404);
        if (rc != MM_OK) return mm_http_fail(500);
        mm_http_response res = mm_http_respond(200);
        mm_http_set_body_ref(&res, value.ptr, value.len);
        return res;
    }
    if (mm_bytes_eq(req->method, "DELETE")) {
        int rc = mm_kv_delete(name);
        if (rc < 0) return mm_http_fail(500);
        return empty(rc == 1 ? 204 : 404);
    }
    return empty(404);
}

mm_http_response handle_http(const mm_http_request *req) {
    /* The path is /conf/<key>/<what>: skip the key, whatever it holds. */
    if (!mm_bytes_starts_with(req->path, "/conf/")) return empty(404);
    mm_bytes what = mm_bytes_from(req->path, 6);
    size_t slash = 0;
    while (slash < what.len && what.ptr[slash] != '/') slash++;
    what = mm_bytes_from(what, slash);

    bool post = mm_bytes_eq(req->method, "POST");
    if (post && mm_bytes_eq(what, "/echo")) return echo(req);
    if (post && mm_bytes_eq(what, "/call")) return call_peer(req);
    if (post && mm_bytes_eq(what, "/send")) return send_self(req);
    if (post && mm_bytes_eq(what, "/trap")) __builtin_trap();
    if (post && mm_bytes_eq(what, "/log")) {
        mm_logf(MM_LOG_INFO, "%.*s", (int)req->body.len, (const char *)req->body.ptr);
        return empty(204);
    }
    if (mm_bytes_starts_with(what, "/kv/") && what.len > 4) return kv(req, mm_bytes_from(what, 4));
    return empty(404);
}

int handle_call(mm_bytes req, mm_buf *reply) {
    mm_buf_append_bytes(reply, req);
    return MM_OK;
}

void handle_message(mm_bytes msg) {
    if (mm_kv_put(MM_LIT("sent"), msg) != MM_OK) mm_fail(500);
}

/* No handle_ws_open or handle_ws_close: without them the SDK accepts every connection and ignores its close. */
void handle_ws_message(uint64_t conn, int type, mm_bytes data) {
    if (type == MM_WS_TEXT) {
        mm_ws_send(conn, MM_WS_TEXT, data);
        mm_ws_publish(MM_WS_TEXT, data, (mm_bytes){NULL, 0});
    } else {
        mm_ws_send(conn, MM_WS_BINARY, data);
    }
}
