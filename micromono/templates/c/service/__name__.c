/*
 * {{name}}: a micromono service in C (made by `micromono new`).
 *
 *   GET /{{name}}, or any path below it   200, text/plain: `hello from {{name}}`
 *   other methods                        405 (with `allow: GET`)
 *
 * micromono.h lists the other handlers a service may define: handle_call for calls from other services
 * (micromono.call), handle_message for their messages (micromono.send).
 */
#include "micromono.h"

mm_http_response handle_http(const mm_http_request *req) {
    if (!mm_bytes_eq(req->method, "GET")) {
        mm_http_response res = mm_http_respond(405);
        mm_http_add_header(&res, "allow", "GET");
        return res;
    }
    mm_http_response res = mm_http_respond(200);
    mm_http_add_header(&res, "content-type", "text/plain");
    mm_buf_append_str(res.body, "hello from {{name}}");
    return res;
}
