/*
 * audit: an in-memory audit trail (micromono example service, C).
 *
 *   MESSAGE   appends the payload as one entry (cut at 256 bytes), stamped with the wall clock. It keeps a
 *             running count and the last 10 entries.
 *   CALL      `COUNT` replies {"count":N}
 *             `LAST`  replies {"count":N,"last":[{"seq":N,"at_ms":T,"entry":"..."}, ...]}, newest first
 *             anything else fails with application error 400.
 * State lives in this instance's memory, so run it with `instances = 1`. Nothing is persisted.
 */
#include <string.h>
#include <time.h>

#include "micromono.h"

#define KEEP 10          /* entries kept */
#define ENTRY_MAX 256    /* bytes kept per entry */
#define ERR_BAD_REQUEST 400

typedef struct entry {
    uint64_t seq;        /* 1-based position in the trail */
    int64_t at_ms;       /* Unix time in milliseconds when it arrived */
    size_t len;
    char text[ENTRY_MAX];
} entry;

static uint64_t count;
static entry ring[KEEP]; /* entry with seq s is at ring[(s - 1) % KEEP] */

static int64_t now_ms(void) {
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC) return 0; /* C11; WASI clock_time_get underneath */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void handle_message(mm_bytes msg) {
    entry *e = &ring[count % KEEP];
    e->seq = ++count;
    e->at_ms = now_ms();
    size_t len = msg.len;
    if (len > ENTRY_MAX) {
        len = ENTRY_MAX;
        while (len > 0 && ((unsigned char)msg.ptr[len] & 0xc0) == 0x80) len--; /* don't split a UTF-8 character */
    }
    e->len = len;
    memcpy(e->text, msg.ptr, e->len);
}

int handle_call(mm_bytes req, mm_buf *reply) {
    bool last = mm_bytes_eq(req, "LAST");
    if (!last && !mm_bytes_eq(req, "COUNT")) return ERR_BAD_REQUEST;
    mm_buf_append_str(reply, "{\"count\":");
    mm_buf_append_u64(reply, count);
    if (last) {
        mm_buf_append_str(reply, ",\"last\":[");
        uint64_t kept = count < KEEP ? count : KEEP;
        for (uint64_t i = 0; i < kept; i++) {
            const entry *e = &ring[(count - 1 - i) % KEEP];
            if (i) mm_buf_append_byte(reply, ',');
            mm_buf_append_str(reply, "{\"seq\":");
            mm_buf_append_u64(reply, e->seq);
            mm_buf_append_str(reply, ",\"at_ms\":");
            mm_buf_append_i64(reply, e->at_ms);
            mm_buf_append_str(reply, ",\"entry\":");
            mm_buf_append_json_string(reply, e->text, e->len);
            mm_buf_append_byte(reply, '}');
        }
        mm_buf_append_byte(reply, ']');
    }
    mm_buf_append_byte(reply, '}');
    return MM_OK;
}
