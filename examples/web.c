/*
 * web: the chat page and the JavaScript stream client, served from the app itself (micromono example service, C).
 *
 *   GET /web/chat/<room>                 the chat page (examples/web/chat.html) for that room
 *   GET /web/chat                        the same page, which asks for a room (or takes ?room=<room>)
 *   GET /static/micromono-stream.js      the client (sdk/js/micromono-stream.js), text/javascript
 *   304 when If-None-Match holds the file's ETag; 404 any other path; 405 any other method (allow: GET)
 *
 * Its routes take everything under /web/ and /static/ (the manifest snippet is in sdk/js/README.md). The page
 * talks to the chat actor at /chat/<room> (a WebSocket, docs/stream.md), which this service does not serve:
 * `/chat/{key}` is the actor's exact one-segment route, so the page lives under /web/ instead. Both files are
 * compiled in (examples/Makefile generates build/web_assets.h with `xxd -i`), so the service needs no file system
 * access, and a new build of the files is a hot swap like any other.
 * Stateless: any number of instances.
 */
#include <stdint.h>

#include "micromono.h"
#include "web_assets.h" /* generated: static const unsigned char chat_html[], micromono_stream_js[] */

typedef struct asset {
    const char *content_type;
    const unsigned char *data;
    unsigned int len;
    char etag[20]; /* "\"" + 16 hex digits + "\"", computed on first use */
} asset;

static asset page = {"text/html; charset=utf-8", chat_html, sizeof chat_html, ""};
static asset client = {"text/javascript; charset=utf-8", micromono_stream_js, sizeof micromono_stream_js, ""};

/* A strong ETag from the bytes (64-bit FNV-1a): the files only change with a new build of this service. */
static const char *etag_of(asset *a) {
    if (a->etag[0] == '\0') {
        uint64_t h = 0xcbf29ce484222325u;
        for (unsigned int i = 0; i < a->len; i++) h = (h ^ a->data[i]) * 0x100000001b3u;
        static const char hex[] = "0123456789abcdef";
        a->etag[0] = '"';
        for (int i = 0; i < 16; i++) a->etag[1 + i] = hex[(h >> (60 - 4 * i)) & 0xf];
        a->etag[17] = '"';
        a->etag[18] = '\0';
    }
    return a->etag;
}

static mm_http_response text(int status, const char *body) {
    mm_http_response res = mm_http_respond(status);
    mm_http_add_header(&res, "content-type", "text/plain; charset=utf-8");
    mm_buf_append_str(res.body, body);
    return res;
}

static mm_http_response serve(const mm_http_request *req, asset *a) {
    const char *etag = etag_of(a);
    mm_bytes match = mm_http_header(req, "if-none-match");
    mm_http_response res = mm_http_respond(match.ptr && mm_bytes_eq(match, etag) ? 304 : 200);
    mm_http_add_header(&res, "etag", etag);
    /* Revalidate every time: a hot swap of this service must reach the next page load. */
    mm_http_add_header(&res, "cache-control", "no-cache");
    if (res.status == 304) return res;
    mm_http_add_header(&res, "content-type", a->content_type);
    mm_http_add_header(&res, "x-content-type-options", "nosniff");
    mm_http_set_body_ref(&res, a->data, a->len); /* a global: valid after the handler returns */
    return res;
}

/* /web/chat, /web/chat/ and /web/chat/<one segment>. */
static bool is_chat_page(mm_bytes path) {
    if (!mm_bytes_starts_with(path, "/web/chat")) return false;
    mm_bytes rest = mm_bytes_from(path, sizeof("/web/chat") - 1);
    if (rest.len == 0) return true;
    if (rest.ptr[0] != '/') return false;
    for (size_t i = 1; i < rest.len; i++)
        if (rest.ptr[i] == '/') return false;
    return true;
}

mm_http_response handle_http(const mm_http_request *req) {
    asset *a = NULL;
    if (mm_bytes_eq(req->path, "/static/micromono-stream.js"))
        a = &client;
    else if (is_chat_page(req->path))
        a = &page;
    if (a == NULL) return text(404, "not found\n");
    if (!mm_bytes_eq(req->method, "GET")) {
        mm_http_response res = text(405, "method not allowed\n");
        mm_http_add_header(&res, "allow", "GET");
        return res;
    }
    return serve(req, a);
}
