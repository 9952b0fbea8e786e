/*
 * echo: returns what it is sent (micromono example service, C). Used by the benchmarks.
 *
 *   HTTP (route /echo)  200 with the request body; content-type copied from the request, else
 *                       application/octet-stream.
 *   CALL                replies the payload unchanged.
 *   MESSAGE             accepted and dropped.
 * Stateless: any number of instances.
 */
#include "micromono.h"

mm_http_response handle_http(const mm_http_request *req) {
    mm_http_response res = mm_http_respond(200);
    mm_bytes type = mm_http_header(req, "content-type");
    mm_http_add_header_bytes(&res, MM_LIT("content-type"), type.ptr ? type : MM_LIT("application/octet-stream"));
    mm_http_set_body_ref(&res, req->body.ptr, req->body.len); /* the request outlives the handler: no copy here */
    return res;
}

int handle_call(mm_bytes req, mm_buf *reply) {
    mm_buf_append_bytes(reply, req);
    return MM_OK;
}

void handle_message(mm_bytes msg) { (void)msg; }
