/*
 * gateway: the HTTP front of the notes app (micromono example service, C).
 *
 * Routes (services.toml routes the /api/ prefix here); every response is JSON:
 *   PUT    /api/notes/<key>   store the request body (UTF-8, at most 512 KiB) as the caller's note <key>
 *   GET    /api/notes/<key>   read it back
 *   DELETE /api/notes/<key>   delete it
 *   GET    /api/audit         the audit trail: count and last 10 entries (public, no token needed)
 *
 * The notes routes need `Authorization: Bearer <token>`. Each request calls `auth` (token -> user name), then
 * `store` with the key namespaced by user ("<user>/<key>"), and each write sends an audit line to `audit`.
 *
 * Status codes:
 *   200/201  read or deleted / updated or created
 *   400      bad key or a body that is not UTF-8          401  no token, or auth rejected it
 *   404      no such note or route                        405  wrong method (with `allow`)
 *   413      note over 512 KiB
 *   502      a dependency failed (trap, ABI violation, unexpected application error, ...)
 *   503      a dependency is overloaded, stopping or timed out: retrying later may work
 * 502/503 bodies name the dependency, the MM_ERR_* code and the host's last_error text.
 */
#include <string.h>
#include <strings.h>

#include "micromono.h"

#define NOTES_PREFIX "/api/notes/"
#define MAX_KEY_BYTES 200
/* Half the daemon's default max_request_bytes (1 MiB, which also bounds the call to store), and under store's own
 * 1 MiB limit: a note that passes here always fits the call, so the user gets 413 rather than a 502. */
#define MAX_NOTE_BYTES (512 * 1024)

/* Store requests and audit lines. Reused across requests, so large notes do not reallocate every time. */
static mm_buf scratch;

/* ---------------------------------------------------------------------------------------------------------------
 * JSON responses
 * ------------------------------------------------------------------------------------------------------------- */

static mm_http_response json_response(int status) {
    mm_http_response res = mm_http_respond(status);
    mm_http_add_header(&res, "content-type", "application/json");
    return res;
}

/* Appends `"name":"value",` style members; the caller writes the braces. */
static void json_member(mm_buf *b, const char *name, mm_bytes value) {
    mm_buf_append_json_string(b, name, strlen(name));
    mm_buf_append_byte(b, ':');
    mm_buf_append_json_string(b, value.ptr, value.len);
}

static mm_http_response json_error(int status, const char *error, const char *message) {
    mm_http_response res = json_response(status);
    mm_buf_append_byte(res.body, '{');
    json_member(res.body, "error", mm_str(error));
    mm_buf_append_byte(res.body, ',');
    json_member(res.body, "message", mm_str(message));
    mm_buf_append_byte(res.body, '}');
    return res;
}

static mm_http_response unauthorized(const char *message) {
    mm_http_response res = json_error(401, "unauthorized", message);
    mm_http_add_header(&res, "www-authenticate", "Bearer");
    return res;
}

static mm_http_response method_not_allowed(const char *allow) {
    mm_http_response res = json_error(405, "method_not_allowed", "method not allowed on this route");
    mm_http_add_header(&res, "allow", allow);
    return res;
}

/* A failed call to `dependency`: 503 when retrying later may help, 502 for everything else. */
static mm_http_response dependency_error(const char *dependency, int rc) {
    int status = rc == MM_ERR_OVERLOADED || rc == MM_ERR_UNAVAILABLE || rc == MM_ERR_TIMEOUT ? 503 : 502;
    mm_bytes why = mm_last_error();
    mm_logf(MM_LOG_WARN, "gateway: call to %s failed: %s (%d): %s", dependency, mm_error_name(rc), rc, why.ptr);

    mm_http_response res = json_response(status);
    mm_buf_append_byte(res.body, '{');
    json_member(res.body, "error", MM_LIT("dependency_failed"));
    mm_buf_append_byte(res.body, ',');
    json_member(res.body, "dependency", mm_str(dependency));
    mm_buf_append_str(res.body, ",\"code\":");
    mm_buf_append_i64(res.body, rc);
    mm_buf_append_byte(res.body, ',');
    json_member(res.body, "reason", mm_str(mm_error_name(rc)));
    mm_buf_append_byte(res.body, ',');
    json_member(res.body, "message", why);
    mm_buf_append_byte(res.body, '}');
    return res;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------------------------------------------------- */

/* Keys are one path segment of URL-safe characters; percent-escapes stay encoded, so "a%20b" is its own key. */
static bool valid_key(mm_bytes key) {
    if (key.len == 0 || key.len > MAX_KEY_BYTES) return false;
    for (size_t i = 0; i < key.len; i++) {
        char c = key.ptr[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '_' || c == '.' || c == '~' || c == '%';
        if (!ok) return false;
    }
    return true;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. Notes are returned inside JSON
 * strings, which must be valid UTF-8. */
static bool valid_utf8(mm_bytes s) {
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0;
    while (i < s.len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t more;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) more = 1, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0) more = 2, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0) more = 3, cp = c & 0x07, min = 0x10000;
        else return false;
        if (s.len - i - 1 < more) return false;
        for (size_t k = 1; k <= more; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += 1 + more;
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Dependencies
 * ------------------------------------------------------------------------------------------------------------- */

/* Resolves the bearer token to a user name with `auth`. On failure returns false and sets *denied. */
static bool authenticate(const mm_http_request *req, mm_bytes *user, mm_http_response *denied) {
    mm_bytes header = mm_http_header(req, "authorization");
    if (!header.ptr || header.len <= 7 || strncasecmp(header.ptr, "Bearer ", 7) != 0) {
        *denied = unauthorized("missing bearer token");
        return false;
    }
    mm_bytes token = mm_bytes_from(header, 7);
    int rc = mm_call("auth", token.ptr, token.len, user);
    if (rc == MM_ERR_APP) {
        *denied = unauthorized("invalid token");
        return false;
    }
    if (rc != MM_OK) {
        *denied = dependency_error("auth", rc);
        return false;
    }
    return true;
}

/* Sends `<op> <user>/<key> [<n> bytes]` to `audit`. A full mailbox must not fail the write that already
 * happened, so a failure is only logged and reported as "audited":false. */
static bool audit(const char *op, mm_bytes user, mm_bytes key, const size_t *bytes) {
    mm_buf_clear(&scratch);
    mm_buf_append_str(&scratch, op);
    mm_buf_append_byte(&scratch, ' ');
    mm_buf_append_bytes(&scratch, user);
    mm_buf_append_byte(&scratch, '/');
    mm_buf_append_bytes(&scratch, key);
    if (bytes) {
        mm_buf_append_byte(&scratch, ' ');
        mm_buf_append_u64(&scratch, *bytes);
        mm_buf_append_str(&scratch, " bytes");
    }
    int rc = scratch.failed ? MM_ERR_TOO_LARGE : mm_send("audit", scratch.ptr, scratch.len);
    if (rc != MM_OK)
        mm_logf(MM_LOG_WARN, "gateway: audit send failed: %s (%d): %s", mm_error_name(rc), rc, mm_last_error().ptr);
    return rc == MM_OK;
}

/* Calls `store` with "<op> <user>/<key>" and, if given, "\n<value>". */
static int store(const char *op, mm_bytes user, mm_bytes key, const mm_bytes *value, mm_bytes *reply) {
    mm_buf_clear(&scratch);
    mm_buf_append_str(&scratch, op);
    mm_buf_append_byte(&scratch, ' ');
    mm_buf_append_bytes(&scratch, user);
    mm_buf_append_byte(&scratch, '/');
    mm_buf_append_bytes(&scratch, key);
    if (value) {
        mm_buf_append_byte(&scratch, '\n');
        mm_buf_append_bytes(&scratch, *value);
    }
    if (scratch.failed) return MM_ERR_TOO_LARGE;
    return mm_call("store", scratch.ptr, scratch.len, reply);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Routes
 * ------------------------------------------------------------------------------------------------------------- */

static void note_members(mm_buf *b, mm_bytes user, mm_bytes key) {
    json_member(b, "user", user);
    mm_buf_append_byte(b, ',');
    json_member(b, "key", key);
}

static mm_http_response put_note(const mm_http_request *req, mm_bytes user, mm_bytes key) {
    if (req->body.len > MAX_NOTE_BYTES) return json_error(413, "too_large", "a note is at most 512 KiB");
    if (!valid_utf8(req->body)) return json_error(400, "bad_request", "a note must be UTF-8 text");
    mm_bytes reply;
    int rc = store("PUT", user, key, &req->body, &reply);
    if (rc != MM_OK) return dependency_error("store", rc);
    bool created = mm_bytes_eq(reply, "created");
    bool audited = audit("PUT", user, key, &req->body.len);

    mm_http_response res = json_response(created ? 201 : 200);
    mm_buf_append_byte(res.body, '{');
    note_members(res.body, user, key);
    mm_buf_append_str(res.body, ",\"bytes\":");
    mm_buf_append_u64(res.body, req->body.len);
    mm_buf_append_str(res.body, created ? ",\"created\":true" : ",\"created\":false");
    mm_buf_append_str(res.body, audited ? ",\"audited\":true}" : ",\"audited\":false}");
    return res;
}

static mm_http_response get_note(mm_bytes user, mm_bytes key) {
    mm_bytes value;
    int rc = store("GET", user, key, NULL, &value);
    /* The only application error store gives a well-formed GET is 404 (not found). */
    if (rc == MM_ERR_APP) return json_error(404, "not_found", "no note with this key");
    if (rc != MM_OK) return dependency_error("store", rc);

    mm_http_response res = json_response(200);
    mm_buf_append_byte(res.body, '{');
    note_members(res.body, user, key);
    mm_buf_append_byte(res.body, ',');
    json_member(res.body, "value", value);
    mm_buf_append_byte(res.body, '}');
    return res;
}

static mm_http_response delete_note(mm_bytes user, mm_bytes key) {
    int rc = store("DEL", user, key, NULL, NULL);
    if (rc == MM_ERR_APP) return json_error(404, "not_found", "no note with this key");
    if (rc != MM_OK) return dependency_error("store", rc);
    bool audited = audit("DEL", user, key, NULL);

    mm_http_response res = json_response(200);
    mm_buf_append_byte(res.body, '{');
    note_members(res.body, user, key);
    mm_buf_append_str(res.body, ",\"deleted\":true");
    mm_buf_append_str(res.body, audited ? ",\"audited\":true}" : ",\"audited\":false}");
    return res;
}

static mm_http_response audit_trail(void) {
    mm_bytes trail;
    int rc = mm_call("audit", "LAST", 4, &trail);
    if (rc != MM_OK) return dependency_error("audit", rc);
    mm_http_response res = json_response(200);
    mm_http_set_body_ref(&res, trail.ptr, trail.len); /* already JSON; the reply lives until we return */
    return res;
}

mm_http_response handle_http(const mm_http_request *req) {
    bool get = mm_bytes_eq(req->method, "GET");
    if (mm_bytes_eq(req->path, "/api/audit")) return get ? audit_trail() : method_not_allowed("GET");

    if (mm_bytes_starts_with(req->path, NOTES_PREFIX)) {
        bool put = mm_bytes_eq(req->method, "PUT"), del = mm_bytes_eq(req->method, "DELETE");
        if (!get && !put && !del) return method_not_allowed("GET, PUT, DELETE");
        mm_bytes key = mm_bytes_from(req->path, strlen(NOTES_PREFIX));
        if (!valid_key(key))
            return json_error(400, "bad_request", "a key is 1-200 characters from A-Z a-z 0-9 - _ . ~ %");

        mm_bytes user;
        mm_http_response denied;
        if (!authenticate(req, &user, &denied)) return denied;
        if (put) return put_note(req, user, key);
        if (del) return delete_note(user, key);
        return get_note(user, key);
    }
    return json_error(404, "not_found", "no such route");
}
