/* ws_load: a single-threaded epoll WebSocket load client for bench_ws's flows (parts fanout and rooms).

A load generator, like wrk is for HTTP, not part of the product: C11 and libc only, one thread, one epoll loop,
a minimal RFC 6455 client. bench_ws.py compiles it at run time (`cc -O2 -std=c11`) into its temp directory and
runs it as a subprocess per flow, because a Python client costs more CPU per received message than either server.

It connects clients-per-room x rooms clients to ws://HOST:PORT<path-prefix><room-names><i> (room i = 0..rooms-1,
client j in room j / clients-per-room), at most CONNECT_CONCURRENCY handshakes at a time; then runs a warm-up flow
of --warmup messages, then the measured flow of --messages messages, with bench_ws's semantics (`run_flow`):

  - message k is sent by client 0 (--sender fanout) or by client k mod clients (--sender rooms); its text is
    "<k> <send time>", the send time in ns of CLOCK_MONOTONIC (perf_counter_ns's clock in Python);
  - every client of the sender's room receives it; a message is outstanding until all of them have; at most
    max(1, in-flight / clients-per-room) messages are outstanding;
  - each client checks its frames: a published text message {"seq": N, "data": "<k> <ns>"} (spaces after the
    colons and commas or not), N its previous N + 1, k a message of this flow sent in its room. Anything else is
    counted as an error (the first one's text is kept); a frame without "seq" is a direct message, not numbered,
    and skipped, as bench_ws's Python client skips `Direct` events;
  - a close frame, EOF or a socket error ends the run with an error (the flow could not complete).

Frames out are masked (a mask from a xorshift generator), frames in must be unmasked and unfragmented; payload
lengths of 7, 16 and 64 bits are read; a ping is answered with a pong, pongs are ignored.

Usage:
  ws_load --host 127.0.0.1 --port P --path-prefix /chat/ --room-names rooms-3- --rooms R --clients-per-room C
          --messages M --in-flight W --sender fanout|rooms --warmup K --timeout-s T [--rate R]
          [--pause-after-warmup]

With --rate R (messages per second, default 0: as fast as the window allows) the measured flow is open-loop
instead: message k is due at k / R seconds after the flow's start and is sent then (the window still bounds what is
outstanding); its send time is the time it was due, so a server that falls behind is charged for the wait (no
coordinated omission). The warm-up flow is always closed-loop.

--timeout-s bounds each phase (connecting, the warm-up flow, the measured flow). With --pause-after-warmup, after
the warm-up flow it writes the line "warm" to stdout and waits for a line on stdin before the measured flow: bench_ws
reads the server's CPU time there, so that its reading covers the measured flow only.

Output, for the measured flow only: one JSON object on stdout, with messages, deliveries (frames of the flow
received), seconds (first send to last receipt), p50_us, p90_us, p99_us, max_us (nearest-rank percentiles of receipt
minus send, over all deliveries), client_cpu_s (this process's utime + stime over the flow, getrusage), errors and
first_error. On failure: a message on stderr and exit code 1 (2 for bad arguments).
*/

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    CONNECT_CONCURRENCY = 64, /* handshakes in progress at most */
    FD_RESERVE = 16,          /* descriptors besides the connections: stdio, epoll */
    IN_INITIAL = 16384,       /* a connection's input buffer to start with; it grows for a larger frame */
    MAX_EVENTS = 256,
    ERROR_TEXT = 300,
};

/* The Sec-WebSocket-Key sent by every client and the Sec-WebSocket-Accept it calls for (RFC 6455's example). */
static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

enum state { IDLE, CONNECTING, HANDSHAKING, OPEN };

struct conn {
    int fd;
    enum state state;
    int room;
    int has_last; /* a numbered frame was seen: last_seq is set */
    long long last_seq;
    unsigned char *in; /* bytes received, not yet parsed */
    size_t in_len, in_cap;
    unsigned char *out; /* bytes to send: out[out_off..out_len) */
    size_t out_off, out_len, out_cap;
    int want_out; /* EPOLLOUT is armed */
    int dirty;    /* in the list of connections to flush */
};

struct flow {
    long long messages;
    int members;       /* clients that receive each message */
    long long window;  /* messages outstanding at most */
    uint32_t *got;     /* receipts per message */
    long long *lat_ns; /* receipt minus send, per delivery */
    long long lat_len, lat_cap;
    long long sent, completed;
    long long first_send_ns, last_recv_ns;
    long long errors;
    char first_error[ERROR_TEXT];
};

/* --- arguments, state ---------------------------------------------------------------------------------------- */

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_path_prefix = "/chat/";
static const char *opt_room_names = NULL;
static int opt_rooms = 0;
static int opt_per_room = 0;
static long long opt_messages = -1;
static long long opt_in_flight = 0;
static int opt_sender_rooms = -1; /* 0: fanout, 1: rooms */
static long long opt_warmup = 0;
static double opt_timeout_s = 0;
static double opt_rate = 0; /* messages per second in the measured flow; 0: closed loop */
static int opt_pause = 0;

static struct conn *conns;
static int nconns;
static int epfd = -1;
static struct sockaddr_in server_addr;
static int *dirty_list;
static int ndirty;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ws_load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xrealloc(void *p, size_t size) {
    void *q = realloc(p, size);
    if (q == NULL) die("out of memory (asked for %zu bytes)", size);
    return q;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static uint32_t next_mask(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static void room_path(int room, char *buf, size_t size) {
    snprintf(buf, size, "%s%s%d", opt_path_prefix, opt_room_names, room);
}

/* The client that sends message k, and so the room that receives it. */
static int sender_of(long long k) { return opt_sender_rooms ? (int)(k % nconns) : 0; }

static void flow_error(struct flow *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void flow_error(struct flow *f, const char *fmt, ...) {
    if (f->errors++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->first_error, sizeof f->first_error, fmt, ap);
        va_end(ap);
    }
}

/* The first bytes of a payload, printable, for an error message. */
static const char *excerpt(const unsigned char *p, size_t n) {
    static char buf[100];
    size_t i, j = 0;
    for (i = 0; i < n && j < sizeof buf - 5; i++) buf[j++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (i < n) buf[j++] = '.', buf[j++] = '.', buf[j++] = '.';
    buf[j] = 0;
    return buf;
}

/* --- sockets --------------------------------------------------------------------------------------------------- */

static void arm(struct conn *c, int idx, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.u32 = (uint32_t)idx};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("client %d: epoll_ctl: %s", idx, strerror(errno));
    c->want_out = want_out;
}

static void append_out(struct conn *c, const void *data, size_t n) {
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

/* Write what a connection has to send; arm EPOLLOUT for the rest if the socket is full. */
static void flush(int idx) {
    struct conn *c = &conns[idx];
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) arm(c, idx, 1);
            return;
        } else {
            char path[256];
            room_path(c->room, path, sizeof path);
            die("client %d (%s): send failed: %s (did the server close the connection?)", idx, path,
                n < 0 ? strerror(errno) : "wrote nothing");
        }
    }
    c->out_off = c->out_len = 0;
    if (c->want_out) arm(c, idx, 0);
}

static void mark_dirty(int idx) {
    if (!conns[idx].dirty) {
        conns[idx].dirty = 1;
        dirty_list[ndirty++] = idx;
    }
}

static void flush_dirty(void) {
    for (int i = 0; i < ndirty; i++) {
        conns[dirty_list[i]].dirty = 0;
        flush(dirty_list[i]);
    }
    ndirty = 0;
}

/* Queue a masked frame (FIN set) of `opcode` with `payload`; flush_dirty() writes it. */
static void queue_frame(int idx, int opcode, const unsigned char *payload, size_t n) {
    unsigned char frame[14 + 256];
    unsigned char *big = NULL, *p = frame;
    size_t hdr = 2 + (n < 126 ? 0 : n <= 0xffff ? 2 : 8) + 4;
    if (hdr + n > sizeof frame) p = big = xrealloc(NULL, hdr + n);
    p[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        p[1] = (unsigned char)(0x80 | n);
    } else if (n <= 0xffff) {
        p[1] = 0x80 | 126;
        p[2] = (unsigned char)(n >> 8);
        p[3] = (unsigned char)n;
    } else {
        p[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) p[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t mask = next_mask();
    unsigned char m[4] = {(unsigned char)(mask >> 24), (unsigned char)(mask >> 16), (unsigned char)(mask >> 8),
                          (unsigned char)mask};
    memcpy(p + hdr - 4, m, 4);
    for (size_t i = 0; i < n; i++) p[hdr + i] = payload[i] ^ m[i & 3];
    append_out(&conns[idx], p, hdr + n);
    free(big);
    mark_dirty(idx);
}

/* Start connecting client idx (non-blocking); the handshake request is queued for when it is writable. */
static void start_connect(int idx) {
    struct conn *c = &conns[idx];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("client %d: socket: %s", idx, strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0 && errno != EINPROGRESS)
        die("client %d: connect to %s:%d failed: %s", idx, opt_host, opt_port, strerror(errno));
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("client %d: epoll_ctl: %s", idx, strerror(errno));
    c->want_out = 1;
    char path[256], req[512];
    room_path(c->room, path, sizeof path);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, opt_host, opt_port, WS_KEY);
    if (n < 0 || (size_t)n >= sizeof req) die("client %d: the request for %s is too long", idx, path);
    append_out(c, req, (size_t)n);
}

/* Read what the socket has into the connection's input buffer; 0 when nothing was there. Dies on EOF or error. */
static size_t read_in(int idx) {
    struct conn *c = &conns[idx];
    if (c->in_cap - c->in_len < IN_INITIAL / 2) {
        c->in_cap *= 2;
        c->in = xrealloc(c->in, c->in_cap);
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            return (size_t)n;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        char path[256];
        room_path(c->room, path, sizeof path);
        if (n == 0)
            die("client %d (%s): the server closed the connection (EOF%s)", idx, path,
                c->state == OPEN ? "" : " during the handshake");
        die("client %d (%s): recv failed: %s", idx, path, strerror(errno));
    }
}

/* --- frames ---------------------------------------------------------------------------------------------------- */

static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static const unsigned char *parse_int(const unsigned char *p, const unsigned char *end, long long *out) {
    int neg = 0;
    long long v = 0;
    if (p < end && *p == '-') neg = 1, p++;
    const unsigned char *start = p;
    while (p < end && *p >= '0' && *p <= '9') {
        if (v > (LLONG_MAX - 9) / 10) return NULL;
        v = v * 10 + (*p++ - '0');
    }
    if (p == start) return NULL;
    *out = neg ? -v : v;
    return p;
}

/* What a text frame is, parsed as a flat JSON object: its "seq" (an integer), its "data" (a string without
   escapes) and whether it has "reset": true. Returns 0 if it is not such an object (a direct message). */
struct text {
    int has_seq, has_data, reset;
    long long seq;
    const unsigned char *data;
    size_t data_len;
};

static int parse_text(const unsigned char *p, size_t n, struct text *t) {
    const unsigned char *end = p + n;
    memset(t, 0, sizeof *t);
    p = skip_ws(p, end);
    if (p == end || *p++ != '{') return 0;
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}') return 1;
        if (p == end || *p++ != '"') return 0;
        const unsigned char *key = p;
        while (p < end && *p != '"' && *p != '\\') p++;
        if (p == end || *p != '"') return 0;
        size_t key_len = (size_t)(p - key);
        p = skip_ws(p + 1, end);
        if (p == end || *p++ != ':') return 0;
        p = skip_ws(p, end);
        if (p == end) return 0;
        if (*p == '"') {
            const unsigned char *s = ++p;
            while (p < end && *p != '"' && *p != '\\') p++;
            if (p == end || *p != '"') return 0; /* an escape: not a text of this flow */
            if (key_len == 4 && memcmp(key, "data", 4) == 0) t->has_data = 1, t->data = s, t->data_len = (size_t)(p - s);
            p++;
        } else if ((*p >= '0' && *p <= '9') || *p == '-') {
            long long v;
            p = parse_int(p, end, &v);
            if (p == NULL) return 0;
            if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return 0;
            if (key_len == 3 && memcmp(key, "seq", 3) == 0) t->has_seq = 1, t->seq = v;
        } else if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
            if (key_len == 5 && memcmp(key, "reset", 5) == 0) t->reset = 1;
            p += 4;
        } else if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
            p += 5;
        } else if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
            p += 4;
        } else {
            return 0;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
        } else if (p < end && *p == '}') {
            return 1;
        } else {
            return 0;
        }
    }
}

static void on_text(struct flow *f, int idx, const unsigned char *payload, size_t n, long long now) {
    struct conn *c = &conns[idx];
    struct text t;
    char path[256];
    if (!parse_text(payload, n, &t) || !t.has_seq || (!t.has_data && !t.reset)) return; /* direct: skip */
    if (t.reset || !t.has_data) {
        room_path(c->room, path, sizeof path);
        flow_error(f, "client %d (%s): expected a published text message, got a reset to seq %lld", idx, path, t.seq);
        c->has_last = 1, c->last_seq = t.seq;
        return;
    }
    if (c->has_last && t.seq != c->last_seq + 1) {
        room_path(c->room, path, sizeof path);
        flow_error(f, "client %d (%s): seq %lld after %lld", idx, path, t.seq, c->last_seq);
    }
    c->has_last = 1, c->last_seq = t.seq;
    long long k, sent;
    const unsigned char *p = parse_int(t.data, t.data + t.data_len, &k);
    if (p != NULL && p < t.data + t.data_len && *p == ' ') p = parse_int(p + 1, t.data + t.data_len, &sent);
    else p = NULL;
    if (p == NULL || p != t.data + t.data_len || k < 0 || k >= f->sent || conns[sender_of(k)].room != c->room) {
        room_path(c->room, path, sizeof path);
        flow_error(f, "client %d (%s): a message not of this flow: '%s'", idx, path, excerpt(t.data, t.data_len));
        return;
    }
    if (f->got[k] >= (uint32_t)f->members) {
        room_path(c->room, path, sizeof path);
        flow_error(f, "client %d (%s): message %lld received more than %d times", idx, path, k, f->members);
        return;
    }
    if (f->lat_len == f->lat_cap) {
        f->lat_cap = f->lat_cap ? f->lat_cap * 2 : 1024;
        f->lat_ns = xrealloc(f->lat_ns, (size_t)f->lat_cap * sizeof *f->lat_ns);
    }
    f->lat_ns[f->lat_len++] = now - sent;
    f->last_recv_ns = now;
    if (++f->got[k] == (uint32_t)f->members) f->completed++;
}

/* Parse the complete frames in a connection's input buffer. */
static void on_frames(struct flow *f, int idx, long long now) {
    struct conn *c = &conns[idx];
    size_t pos = 0;
    char path[256];
    while (c->in_len - pos >= 2) {
        const unsigned char *p = c->in + pos;
        size_t avail = c->in_len - pos, hdr = 2;
        uint64_t len = p[1] & 0x7f;
        int fin = p[0] & 0x80, opcode = p[0] & 0x0f;
        if (p[1] & 0x80 || (p[0] & 0x70)) {
            room_path(c->room, path, sizeof path);
            die("client %d (%s): the server sent a %s frame (first bytes %02x %02x): not RFC 6455 for a client",
                idx, path, p[1] & 0x80 ? "masked" : "RSV-flagged", p[0], p[1]);
        }
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)p[2] << 8 | p[3];
            hdr = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            hdr = 10;
        }
        if (len > ((uint64_t)1 << 30)) {
            room_path(c->room, path, sizeof path);
            die("client %d (%s): the server announced a frame of %llu bytes", idx, path, (unsigned long long)len);
        }
        if (avail < hdr + len) {
            if (hdr + len > c->in_cap) {
                c->in_cap = (hdr + len) * 2;
                c->in = xrealloc(c->in, c->in_cap);
            }
            break;
        }
        const unsigned char *payload = p + hdr;
        if (!fin || opcode == 0) {
            room_path(c->room, path, sizeof path);
            die("client %d (%s): the server sent a fragmented message, which ws_load does not take", idx, path);
        }
        switch (opcode) {
            case 1:
                if (f != NULL) on_text(f, idx, payload, (size_t)len, now);
                break;
            case 2:
                if (f != NULL) {
                    room_path(c->room, path, sizeof path);
                    flow_error(f, "client %d (%s): expected a published text message, got a binary frame of %llu "
                               "bytes", idx, path, (unsigned long long)len);
                }
                break;
            case 8: {
                int code = len >= 2 ? payload[0] << 8 | payload[1] : 1005;
                room_path(c->room, path, sizeof path);
                die("client %d (%s): the server closed the connection (close frame, code %d, reason '%s')", idx,
                    path, code, len > 2 ? excerpt(payload + 2, (size_t)len - 2) : "");
            }
            case 9:
                queue_frame(idx, 10, payload, (size_t)len);
                break;
            case 10:
                break;
            default:
                room_path(c->room, path, sizeof path);
                die("client %d (%s): the server sent a frame of unknown opcode %d", idx, path, opcode);
        }
        pos += hdr + len;
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
}

/* --- the loop -------------------------------------------------------------------------------------------------- */

static int handshakes_done; /* clients open */

/* Handle the response to a handshake so far; returns 1 when the connection is open. */
static int on_handshake(int idx) {
    struct conn *c = &conns[idx];
    unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    char path[256];
    if (end == NULL) {
        if (c->in_len > 16384) {
            room_path(c->room, path, sizeof path);
            die("client %d (%s): the answer to the handshake has no end of headers in 16 KiB", idx, path);
        }
        return 0;
    }
    size_t head = (size_t)(end - c->in) + 4;
    unsigned char *eol = memmem(c->in, head, "\r\n", 2);
    size_t line = (size_t)(eol - c->in);
    room_path(c->room, path, sizeof path);
    if (line < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0)
        die("client %d: GET %s was answered '%s', expected 'HTTP/1.1 101 Switching Protocols' (is the route a "
            "WebSocket one?)", idx, path, excerpt(c->in, line));
    if (memmem(c->in, head, WS_ACCEPT, sizeof WS_ACCEPT - 1) == NULL)
        die("client %d: GET %s was answered 101 without 'Sec-WebSocket-Accept: %s'", idx, path, WS_ACCEPT);
    memmove(c->in, c->in + head, c->in_len - head);
    c->in_len -= head;
    c->state = OPEN;
    return 1;
}

/* Wait for events up to `timeout_ms` and handle them; `f` is the flow under way, NULL while connecting. */
static void pump_until(struct flow *f, int timeout_ms, long long due_ns);

static void pump(struct flow *f, int timeout_ms) { pump_until(f, timeout_ms, -1); }

/* The same, waiting at most until `due_ns` (CLOCK_MONOTONIC ns) when it is not -1: an open-loop flow's next
   message, to the microsecond (epoll_pwait2), so that sends are neither late nor spun for. */
static void pump_until(struct flow *f, int timeout_ms, long long due_ns) {
    struct epoll_event events[MAX_EVENTS];
    int n;
    if (due_ns >= 0) {
        long long wait = due_ns - now_ns();
        if (wait < 0) wait = 0;
        if (wait > (long long)timeout_ms * 1000000) wait = (long long)timeout_ms * 1000000;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000), .tv_nsec = (long)(wait % 1000000000)};
        n = epoll_pwait2(epfd, events, MAX_EVENTS, &ts, NULL);
    } else {
        n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
    }
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        int idx = (int)events[i].data.u32;
        struct conn *c = &conns[idx];
        uint32_t ev = events[i].events;
        if (c->state == CONNECTING) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) die("client %d: connect to %s:%d failed: %s", idx, opt_host, opt_port, strerror(err));
            if (!(ev & (EPOLLOUT | EPOLLIN))) continue;
            c->state = HANDSHAKING;
            flush(idx);
            continue;
        }
        if ((ev & EPOLLOUT) && c->out_off < c->out_len) flush(idx);
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            if (read_in(idx) == 0) continue;
            long long now = now_ns(); /* the receipt time of every frame this read completed */
            if (c->state == HANDSHAKING) {
                if (!on_handshake(idx)) continue;
                handshakes_done++;
            }
            on_frames(f, idx, now);
        }
    }
    flush_dirty();
}

static int ms_left(long long deadline) {
    long long left = (deadline - now_ns()) / 1000000 + 1;
    return left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static void connect_all(void) {
    long long deadline = now_ns() + (long long)(opt_timeout_s * 1e9);
    int started = 0;
    while (handshakes_done < nconns) {
        while (started < nconns && started - handshakes_done < CONNECT_CONCURRENCY) start_connect(started++);
        if (now_ns() >= deadline)
            die("connecting %d clients to %s:%d did not finish within %g s (%d open); raise --timeout-s or check "
                "the server", nconns, opt_host, opt_port, opt_timeout_s, handshakes_done);
        pump(NULL, ms_left(deadline));
    }
}

/* Run a flow of `messages` messages; fills `f` (the caller frees its arrays). */
static void run_flow(struct flow *f, long long messages, const char *name, double rate) {
    memset(f, 0, sizeof *f);
    f->messages = messages;
    f->members = opt_per_room;
    f->window = opt_in_flight / opt_per_room > 0 ? opt_in_flight / opt_per_room : 1;
    f->got = calloc((size_t)(messages > 0 ? messages : 1), sizeof *f->got);
    if (f->got == NULL) die("out of memory for a flow of %lld messages", messages);
    f->lat_cap = messages * opt_per_room;
    f->lat_ns = xrealloc(NULL, (size_t)(f->lat_cap > 0 ? f->lat_cap : 1) * sizeof *f->lat_ns);
    long long deadline = now_ns() + (long long)(opt_timeout_s * 1e9);
    char text[64];
    long long start = f->first_send_ns = now_ns();
    double interval_ns = rate > 0 ? 1e9 / rate : 0;
    while (f->completed < messages) {
        long long now = now_ns(), next_due = -1;
        while (f->sent < messages && f->sent - f->completed < f->window) {
            long long k = f->sent, sent_at = now;
            if (rate > 0) {
                sent_at = start + (long long)((double)k * interval_ns);
                if (sent_at > now) {
                    next_due = sent_at;
                    break;
                }
            }
            f->sent++;
            int n = snprintf(text, sizeof text, "%lld %lld", k, sent_at);
            queue_frame(sender_of(k), 1, (const unsigned char *)text, (size_t)n);
        }
        flush_dirty();
        if (now_ns() >= deadline)
            die("the %s flow of %lld messages did not end within %g s: %lld of %lld deliveries arrived (%lld "
                "messages complete, %lld errors%s%s)", name, messages, opt_timeout_s, f->lat_len,
                messages * opt_per_room, f->completed, f->errors, f->errors ? ", first: " : "", f->first_error);
        pump_until(f, ms_left(deadline), next_due);
    }
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile, in µs, as bench_actors.percentile: the value at rank ceil(n * q / 100). */
static void print_percentile(const char *key, const long long *sorted, long long n, int q) {
    if (n == 0) {
        printf("\"%s\": null, ", key);
        return;
    }
    long long rank = (n * q + 99) / 100;
    if (rank < 1) rank = 1;
    printf("\"%s\": %.3f, ", key, (double)sorted[rank - 1] / 1e3);
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

/* --- main ------------------------------------------------------------------------------------------------------ */

static void usage(const char *why) {
    fprintf(stderr,
            "ws_load: %s\nusage: ws_load --host 127.0.0.1 --port P --path-prefix /chat/ --room-names rooms-3- "
            "--rooms R --clients-per-room C --messages M --in-flight W --sender fanout|rooms --warmup K "
            "--timeout-s T [--rate R] [--pause-after-warmup]\n(see the comment at the top of benches/ws_load.c)\n",
            why);
    exit(2);
}

static long long int_arg(const char *name, const char *value, long long min) {
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (errno != 0 || *end != 0 || end == value || v < min) {
        char why[200];
        snprintf(why, sizeof why, "%s takes an integer >= %lld, got '%s'", name, min, value);
        usage(why);
    }
    return v;
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--pause-after-warmup") == 0) {
            opt_pause = 1;
            continue;
        }
        if (i + 1 >= argc) {
            char why[200];
            snprintf(why, sizeof why, "%s needs a value", a);
            usage(why);
        }
        const char *v = argv[++i];
        if (strcmp(a, "--host") == 0) opt_host = v;
        else if (strcmp(a, "--port") == 0) opt_port = (int)int_arg(a, v, 1);
        else if (strcmp(a, "--path-prefix") == 0) opt_path_prefix = v;
        else if (strcmp(a, "--room-names") == 0) opt_room_names = v;
        else if (strcmp(a, "--rooms") == 0) opt_rooms = (int)int_arg(a, v, 1);
        else if (strcmp(a, "--clients-per-room") == 0) opt_per_room = (int)int_arg(a, v, 1);
        else if (strcmp(a, "--messages") == 0) opt_messages = int_arg(a, v, 1);
        else if (strcmp(a, "--in-flight") == 0) opt_in_flight = int_arg(a, v, 1);
        else if (strcmp(a, "--rate") == 0) {
            char *end;
            opt_rate = strtod(v, &end);
            if (*end != '\0' || !(opt_rate >= 0)) usage("--rate takes messages per second, 0 or more");
        }
        else if (strcmp(a, "--warmup") == 0) opt_warmup = int_arg(a, v, 0);
        else if (strcmp(a, "--timeout-s") == 0) {
            char *end;
            opt_timeout_s = strtod(v, &end);
            if (*end != 0 || end == v || !(opt_timeout_s > 0)) usage("--timeout-s takes a number of seconds > 0");
        } else if (strcmp(a, "--sender") == 0) {
            if (strcmp(v, "fanout") == 0) opt_sender_rooms = 0;
            else if (strcmp(v, "rooms") == 0) opt_sender_rooms = 1;
            else usage("--sender takes fanout or rooms");
        } else {
            char why[200];
            snprintf(why, sizeof why, "unknown option '%s'", a);
            usage(why);
        }
    }
    if (!opt_port || !opt_room_names || !opt_rooms || !opt_per_room || opt_messages < 0 || !opt_in_flight ||
        opt_sender_rooms < 0 || !(opt_timeout_s > 0))
        usage("--port, --room-names, --rooms, --clients-per-room, --messages, --in-flight, --sender and --timeout-s "
              "are required");
    if (opt_per_room > 65535) usage("--clients-per-room is at most 65535");
    if ((long long)opt_rooms * opt_per_room > 1000000) usage("rooms x clients-per-room is at most 1000000");
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1) usage("--host takes an IPv4 address");
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
}

/* Raise the soft open-files limit so that every connection gets a descriptor. */
static void raise_nofile(void) {
    struct rlimit rl;
    rlim_t need = (rlim_t)nconns + FD_RESERVE;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    if (rl.rlim_cur >= need) return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
        die("%d connections need %llu file descriptors, but RLIMIT_NOFILE's hard limit is %llu (`ulimit -Hn`): "
            "raise it or use fewer clients", nconns, (unsigned long long)need, (unsigned long long)rl.rlim_max);
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long)need,
                                                strerror(errno));
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    nconns = opt_rooms * opt_per_room;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    rng_state ^= (uint64_t)now_ns() * 0xBF58476D1CE4E5B9ull;
    conns = calloc((size_t)nconns, sizeof *conns);
    dirty_list = calloc((size_t)nconns, sizeof *dirty_list);
    if (conns == NULL || dirty_list == NULL) die("out of memory for %d clients", nconns);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].room = i / opt_per_room;
        conns[i].in_cap = IN_INITIAL;
        conns[i].in = xrealloc(NULL, IN_INITIAL);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));

    connect_all();

    struct flow f;
    if (opt_warmup > 0) {
        run_flow(&f, opt_warmup, "warm-up", 0);
        free(f.got);
        free(f.lat_ns);
    }
    if (opt_pause) {
        char line[64];
        fputs("warm\n", stdout);
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL) die("stdin ended while waiting after the warm-up flow");
    }
    double cpu0 = cpu_s();
    run_flow(&f, opt_messages, "measured", opt_rate);
    double cpu = cpu_s() - cpu0;

    qsort(f.lat_ns, (size_t)f.lat_len, sizeof *f.lat_ns, cmp_ll);
    printf("{\"messages\": %lld, \"deliveries\": %lld, \"seconds\": %.9f, ", f.messages, f.lat_len,
           (double)(f.last_recv_ns - f.first_send_ns) / 1e9);
    print_percentile("p50_us", f.lat_ns, f.lat_len, 50);
    print_percentile("p90_us", f.lat_ns, f.lat_len, 90);
    print_percentile("p99_us", f.lat_ns, f.lat_len, 99);
    if (f.lat_len) printf("\"max_us\": %.3f, ", (double)f.lat_ns[f.lat_len - 1] / 1e3);
    else printf("\"max_us\": null, ");
    printf("\"client_cpu_s\": %.6f, \"errors\": %lld, \"first_error\": ", cpu, f.errors);
    print_json_string(f.first_error);
    printf("}\n");
    fflush(stdout);

    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    close(epfd);
    free(f.got);
    free(f.lat_ns);
    return 0;
}
