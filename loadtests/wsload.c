/*
 * wsload: a WebSocket (RFC 6455) load generator that is not the bottleneck.
 *
 * One thread, one epoll set, non-blocking sockets, frames encoded and masked once
 * (a broadcast/fanout frame gets its 24-byte id+timestamp prefix re-masked per send),
 * server frames parsed incrementally without buffering payloads (only the first 24
 * bytes of a message are kept, for its timestamp). Loopback targets only (127.0.0.0/8);
 * every run is bounded by its duration and stops by itself. Prints ONE JSON line on stdout;
 * progress lines ("# phase ...") go to stderr so a driver can sample the server meanwhile.
 *
 * Build: gcc -O2 -o build/wsload loadtests/wsload.c
 *
 * Modes (see loadtests/README.md):
 *   echo       N connections; closed loop (one message in flight per connection), or open
 *              loop with --rate R (messages/s in total, latency from the intended send time)
 *   broadcast  N members of one room (--path /room); everyone sends, taking turns (closed
 *              loop: --window messages in flight room-wide, one is done when its sender gets
 *              its own copy; or --rate R in total); everyone counts what it receives and the
 *              delivery latency from the timestamp in each message
 *   fanout     connection 0 publishes (closed loop with --window, or --rate), N subscribers
 *              count; --slow 1 makes the last subscriber stop reading: the others' numbers
 *              must hold
 *   idle       open N connections, complete the handshakes, print "# phase ready", hold
 *              for --duration seconds (answering pings), report
 *   handshake  --concurrency C at a time: connect, upgrade (101), close frame, wait for
 *              the server's close or EOF; reports handshakes/s
 * Every mode also reports handshake_latency_us: connect() to a validated 101, per handshake.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define VERSION "1"
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="          /* RFC 6455 section 1.3 sample */
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="   /* its Sec-WebSocket-Accept */
#define MAX_HEAD 8192
#define STAMP 24                                   /* 8 hex sender id + 16 hex ns */
#define RING 1024                                  /* open-loop echo: sends in flight */
#define MAX_OUTQ (4u << 20)                        /* a sender's queued bytes cap */

enum mode { M_ECHO, M_BROADCAST, M_FANOUT, M_IDLE, M_HANDSHAKE };
enum cstate { C_FREE, C_CONNECTING, C_UPGRADING, C_OPEN, C_CLOSING, C_DONE };
enum role { R_MEMBER, R_PUBLISHER, R_SUBSCRIBER, R_SLOW };

typedef struct conn {
    int fd;
    int idx;
    enum cstate state;
    enum role role;
    uint32_t events;              /* current epoll interest */
    uint64_t started_ns;          /* connect() time (handshake timeout) */
    /* HTTP response head */
    char *head;
    size_t head_len;
    /* outgoing bytes not yet taken by the kernel */
    char *outq;
    size_t out_len, out_off, out_cap;
    /* incremental frame parser: header bytes, then payload remaining */
    uint8_t hdr[14];
    uint8_t hdr_len, hdr_need;
    uint8_t opcode;               /* opcode of the frame being parsed */
    uint8_t fin;
    uint8_t in_payload;           /* 0: reading a header, 1: reading its payload */
    uint8_t msg_opcode;           /* opcode of the message being assembled (1/2) */
    uint64_t remaining;           /* payload bytes of the current frame still to come */
    uint64_t msg_len;             /* payload bytes of the current message so far */
    uint8_t ctrl[125];
    uint8_t ctrl_len;
    uint8_t stamp[STAMP];
    uint8_t stamp_len;
    /* closed loop */
    uint64_t sent_ns;             /* echo: send time of the message in flight (0: none);
                                     rooms: time of this sender's last send or return */
    uint32_t inflight;            /* rooms: own messages sent, not yet back */
    /* open-loop echo: intended send times in flight, FIFO */
    uint64_t *ring;
    uint32_t ring_head, ring_count;
    /* per-connection frame copy when a stamp is patched in */
    uint8_t *frame;
    uint8_t key[4];
    uint64_t seq;
} conn_t;

/* ------------------------------------------------------------------ options */
static enum mode g_mode = M_ECHO;
static const char *g_host = "127.0.0.1";
static int g_port = 8080;
static const char *g_path = NULL;
static long g_conns = 100;
static long g_size = 20;
static int g_binary = 0;
static double g_duration = 5.0;
static double g_warmup = 1.0;
static double g_rate = 0.0;
static long g_concurrency = 256;    /* handshakes in progress at once */
static int g_slow = 0;
static double g_settle = 0.5;       /* broadcast/fanout: after the last join, before sending */
static double g_connect_timeout = 30.0;
static double g_msg_timeout = 5.0;  /* closed loop: resend if a message never came back */
static long g_window = 4;           /* rooms, closed loop: messages in flight room-wide */
static int g_slow_rcvbuf = 4096;
static int g_src_ips = 1;           /* >1: source addresses 127.0.0.1..N, round robin */
static uint64_t g_src_next = 0;    /* fanout: SO_RCVBUF of the subscriber that stops reading */
static const char *g_label = "";
static int g_delack = 0;            /* TCP_QUICKACK=0 after each read: fewer pure ACKs */

/* ------------------------------------------------------------------ state */
static int g_ep = -1;
static int g_tfd = -1;
static conn_t *g_c = NULL;
static long g_nc = 0;
static struct sockaddr_in g_addr;
static char g_request[1024];
static size_t g_request_len;
static uint8_t *g_frame;            /* the pre-encoded masked message frame */
static size_t g_frame_len, g_frame_hdr;
static uint8_t g_close_frame[8];
static volatile sig_atomic_t g_stop = 0;

static int g_measuring = 0;
static uint64_t g_t0, g_win_start, g_win_end;
static long g_opened = 0, g_open_now = 0, g_connecting = 0, g_next_to_open = 0;
static uint64_t g_sent = 0, g_recv = 0, g_recv_bytes = 0;      /* in the window */
static uint64_t g_sent_all = 0, g_recv_all = 0;                /* the whole run */
static uint64_t g_handshakes = 0, g_hs_window = 0;
static uint64_t g_lost = 0, g_skipped = 0;
static uint64_t g_err_connect = 0, g_err_handshake = 0, g_err_protocol = 0,
                g_err_closed = 0, g_err_timeout = 0, g_err_mismatch = 0;
static uint64_t g_slow_closed = 0, g_pings = 0;
static long g_inflight = 0;         /* rooms, closed loop */
static uint64_t g_sched_next = 0, g_sched_interval = 0, g_sched_rr = 0, g_late_max = 0;
static struct rusage g_ru0, g_ru1;
static long g_ready_at_ms = -1;
static long g_open_at_stop = 0;

/* ------------------------------------------------------------------ time */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ histogram
 * log-linear: 128 sub-buckets per power of two (< 0.8 % error), values in ns. */
#define SUB_BITS 7
#define SUB (1 << SUB_BITS)
#define NBUCKETS (64 * SUB)
typedef struct hist {
    uint64_t b[NBUCKETS];
    uint64_t n, max;
    long double sum;
} hist_t;
static hist_t g_lat;                /* message / delivery latency in the measured window */
static hist_t g_hs_lat;             /* connect() to a validated 101, every handshake */

static inline int hidx(uint64_t v) {
    if (v < SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return ((shift + 1) << SUB_BITS) + (int)((v >> shift) - SUB);
}
static inline uint64_t hval(int idx) { /* midpoint of the bucket */
    if (idx < SUB) return (uint64_t)idx;
    int shift = (idx >> SUB_BITS) - 1;
    uint64_t lo = ((uint64_t)((idx & (SUB - 1)) + SUB)) << shift;
    return lo + ((1ull << shift) >> 1);
}
static inline void hrecord(hist_t *h, uint64_t v) {
    h->b[hidx(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max) h->max = v;
}
static double hpct(const hist_t *h, double p) { /* microseconds */
    if (!h->n) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->n + 0.5);
    if (rank < 1) rank = 1;
    uint64_t acc = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        acc += h->b[i];
        if (acc >= rank) {
            uint64_t v = hval(i);
            if (v > h->max) v = h->max;
            return v / 1000.0;
        }
    }
    return h->max / 1000.0;
}

/* ------------------------------------------------------------------ helpers */
static void die(const char *msg) {
    fprintf(stderr, "wsload: %s\n", msg);
    exit(2);
}
static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) die("out of memory");
    return p;
}
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}
static void phase(const char *name) {
    fprintf(stderr, "# phase %s %.3f\n", name, (now_ns() - g_t0) / 1e9);
    fflush(stderr);
}

static void ep_set(conn_t *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e) == 0) c->events = ev;
}

static inline uint32_t want_in(conn_t *c) { return c->role == R_SLOW && g_measuring ? EPOLLRDHUP : EPOLLIN; }

/* hand bytes to the kernel, queue what it does not take */
static int conn_write(conn_t *c, const void *buf, size_t len) {
    const uint8_t *p = buf;
    if (c->out_len == c->out_off) {
        c->out_len = c->out_off = 0;
        while (len) {
            ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                p += n;
                len -= (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            return -1;
        }
        if (!len) return 0;
    }
    if (c->out_len + len > c->out_cap) {
        if (c->out_off) { /* compact */
            memmove(c->outq, c->outq + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + len) cap *= 2;
            char *q = realloc(c->outq, cap);
            if (!q) die("out of memory");
            c->outq = q;
            c->out_cap = cap;
        }
    }
    memcpy(c->outq + c->out_len, p, len);
    c->out_len += len;
    ep_set(c, want_in(c) | EPOLLOUT);
    return 0;
}
static inline size_t conn_queued(conn_t *c) { return c->out_len - c->out_off; }

static int conn_flush(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->outq + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        return -1;
    }
    c->out_len = c->out_off = 0;
    /* do not keep big idle buffers, except one the next message needs anyway (1 MiB echo:
     * freeing it would cost a fresh mmap and its page faults per message) */
    if (c->out_cap > (1u << 16) && c->out_cap > 2 * g_frame_len + 4096) {
        free(c->outq);
        c->outq = NULL;
        c->out_cap = 0;
    }
    ep_set(c, want_in(c));
    return 0;
}

/* a masked client frame with a short payload (pong, close) */
static int send_control(conn_t *c, uint8_t opcode, const uint8_t *payload, size_t len) {
    uint8_t f[6 + 125];
    if (len > 125) len = 125;
    f[0] = 0x80 | opcode;
    f[1] = 0x80 | (uint8_t)len;
    memcpy(f + 2, c->key, 4);
    for (size_t i = 0; i < len; i++) f[6 + i] = payload[i] ^ c->key[i & 3];
    return conn_write(c, f, 6 + len);
}

static void conn_close(conn_t *c) {
    if (c->state == C_FREE || c->state == C_DONE) return;
    if (c->state == C_CONNECTING || c->state == C_UPGRADING) g_connecting--;
    if (c->state == C_OPEN || c->state == C_CLOSING) g_open_now--;
    if (c->inflight) { /* its messages will never come back */
        g_inflight -= c->inflight;
        if (!g_stop) g_lost += c->inflight;
        c->inflight = 0;
    }
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_DONE;
    free(c->head);
    c->head = NULL;
    free(c->outq);
    c->outq = NULL;
    c->out_len = c->out_off = c->out_cap = 0;
}

/* ------------------------------------------------------------------ frames */
static size_t encode_header(uint8_t *h, uint8_t opcode, uint64_t len, const uint8_t key[4]) {
    size_t n = 0;
    h[n++] = 0x80 | opcode;
    if (len < 126) {
        h[n++] = 0x80 | (uint8_t)len;
    } else if (len < 65536) {
        h[n++] = 0x80 | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (uint8_t)(len >> (8 * i));
    }
    memcpy(h + n, key, 4);
    return n + 4;
}

static void build_frames(void) {
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t h[14];
    g_frame_hdr = encode_header(h, g_binary ? 2 : 1, (uint64_t)g_size, key);
    g_frame_len = g_frame_hdr + (size_t)g_size;
    g_frame = xmalloc(g_frame_len);
    memcpy(g_frame, h, g_frame_hdr);
    for (long i = 0; i < g_size; i++) {
        uint8_t b = (uint8_t)('a' + (i % 26)); /* ASCII: valid as text and as binary */
        g_frame[g_frame_hdr + (size_t)i] = b ^ key[i & 3];
    }
    /* close 1000, masked */
    uint8_t code[2] = {0x03, 0xe8};
    g_close_frame[0] = 0x88;
    g_close_frame[1] = 0x82;
    memcpy(g_close_frame + 2, key, 4);
    g_close_frame[6] = code[0] ^ key[0];
    g_close_frame[7] = code[1] ^ key[1];
}

static const char HEX[] = "0123456789abcdef";

/* send one message; in broadcast/fanout it carries "<8 hex sender><16 hex ns>" */
static int send_message(conn_t *c, uint64_t stamp_ns) {
    const uint8_t *f = g_frame;
    if (c->frame) {
        uint8_t s[STAMP];
        uint32_t id = (uint32_t)c->idx;
        for (int i = 0; i < 8; i++) s[i] = (uint8_t)HEX[(id >> (28 - 4 * i)) & 15];
        for (int i = 0; i < 16; i++) s[8 + i] = (uint8_t)HEX[(stamp_ns >> (60 - 4 * i)) & 15];
        uint8_t *p = c->frame + g_frame_hdr;
        const uint8_t *k = c->frame + g_frame_hdr - 4;
        for (int i = 0; i < STAMP; i++) p[i] = s[i] ^ k[i & 3];
        f = c->frame;
    }
    if (conn_write(c, f, g_frame_len) < 0) return -1;
    g_sent_all++;
    if (g_measuring) g_sent++;
    return 0;
}

static int parse_stamp(const uint8_t *s, uint32_t *id, uint64_t *ns) {
    uint64_t v = 0;
    for (int i = 0; i < STAMP; i++) {
        uint8_t ch = s[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = (v << 4) | (uint64_t)d;
        if (i == 7) {
            *id = (uint32_t)v;
            v = 0;
        }
    }
    *ns = v;
    return 0;
}

static int uses_stamp(void) { return g_mode == M_BROADCAST || g_mode == M_FANOUT; }
static void room_fill(uint64_t t);

/* a complete message arrived on c */
static void on_message(conn_t *c, uint64_t t) {
    g_recv_all++;
    if (g_mode == M_ECHO) {
        if ((long)c->msg_len != g_size) g_err_mismatch++;
        uint64_t sent = 0;
        if (g_rate > 0) {
            if (c->ring_count) {
                sent = c->ring[c->ring_head];
                c->ring_head = (c->ring_head + 1) % RING;
                c->ring_count--;
            }
        } else {
            sent = c->sent_ns;
            c->sent_ns = 0;
        }
        if (g_measuring && sent) {
            g_recv++;
            g_recv_bytes += c->msg_len;
            hrecord(&g_lat, t - sent);
        }
        if (g_rate <= 0 && !g_stop && c->state == C_OPEN) {
            c->sent_ns = now_ns();
            if (send_message(c, 0) < 0) conn_close(c);
        }
        return;
    }
    if (g_mode == M_IDLE || g_mode == M_HANDSHAKE) return;
    /* broadcast / fanout */
    uint32_t id = 0;
    uint64_t ns = 0;
    if (c->stamp_len < STAMP || parse_stamp(c->stamp, &id, &ns) < 0) {
        g_err_mismatch++;
        return;
    }
    int counts = g_mode == M_BROADCAST || c->role == R_SUBSCRIBER;
    if (g_measuring && counts) {
        g_recv++;
        g_recv_bytes += c->msg_len;
        if (t > ns) hrecord(&g_lat, t - ns);
    }
    /* closed loop: my own message came back -> the room may send the next one */
    if (g_rate <= 0 && id == (uint32_t)c->idx && c->inflight > 0) {
        c->inflight--;
        g_inflight--;
        c->sent_ns = t;
        if (!g_stop) room_fill(t);
    }
}

static void on_frame(conn_t *c, uint64_t t) {
    uint8_t op = c->opcode;
    if (op >= 8) {
        if (op == 9) { /* ping -> pong */
            g_pings++;
            if (send_control(c, 10, c->ctrl, c->ctrl_len) < 0) conn_close(c);
        } else if (op == 8) { /* close */
            if (c->state == C_OPEN) {
                if (!g_stop) {
                    if (c->role == R_SLOW) g_slow_closed++;
                    else g_err_closed++;
                }
                send_control(c, 8, c->ctrl, c->ctrl_len >= 2 ? 2 : 0);
            }
            if (g_mode == M_HANDSHAKE && c->state == C_CLOSING) {
                g_handshakes++;
                if (g_measuring) g_hs_window++;
            }
            conn_close(c);
        } else if (op != 10) {
            g_err_protocol++;
            conn_close(c);
        }
        return;
    }
    if (c->fin) {
        on_message(c, t);
        c->msg_len = 0;
        c->stamp_len = 0;
    }
}

/* feed received bytes into c's parser; never keeps payload beyond the stamp */
static void parse_frames(conn_t *c, const uint8_t *p, size_t n, uint64_t t) {
    while (n && c->state != C_DONE) {
        if (!c->in_payload) {
            if (c->hdr_need == 0) c->hdr_need = 2;
            size_t take = c->hdr_need - c->hdr_len;
            if (take > n) take = n;
            memcpy(c->hdr + c->hdr_len, p, take);
            c->hdr_len += (uint8_t)take;
            p += take;
            n -= take;
            if (c->hdr_len < c->hdr_need) return;
            if (c->hdr_need == 2) {
                uint8_t b0 = c->hdr[0], b1 = c->hdr[1];
                uint8_t len7 = b1 & 0x7f;
                if ((b0 & 0x70) || (b1 & 0x80)) { /* RSV bits or masked server frame */
                    g_err_protocol++;
                    conn_close(c);
                    return;
                }
                uint8_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
                if (need > 2) {
                    c->hdr_need = need;
                    continue;
                }
            }
            /* header complete */
            uint8_t b0 = c->hdr[0], len7 = c->hdr[1] & 0x7f;
            uint64_t len = len7;
            if (len7 == 126) len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
            else if (len7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++) len = (len << 8) | c->hdr[2 + i];
            }
            c->opcode = b0 & 0x0f;
            c->fin = b0 >> 7;
            c->remaining = len;
            c->ctrl_len = 0;
            if (c->opcode >= 8) {
                if (len > 125 || !c->fin) {
                    g_err_protocol++;
                    conn_close(c);
                    return;
                }
            } else if (c->opcode == 1 || c->opcode == 2) {
                c->msg_opcode = c->opcode;
                c->msg_len = 0;
                c->stamp_len = 0;
            } else if (c->opcode != 0) {
                g_err_protocol++;
                conn_close(c);
                return;
            }
            c->hdr_len = 0;
            c->hdr_need = 0;
            if (len == 0) {
                on_frame(c, t);
                continue;
            }
            c->in_payload = 1;
        }
        /* payload */
        size_t take = c->remaining < n ? (size_t)c->remaining : n;
        if (c->opcode >= 8) {
            memcpy(c->ctrl + c->ctrl_len, p, take);
            c->ctrl_len += (uint8_t)take;
        } else {
            if (c->stamp_len < STAMP && uses_stamp()) {
                size_t s = STAMP - c->stamp_len;
                if (s > take) s = take;
                memcpy(c->stamp + c->stamp_len, p, s);
                c->stamp_len += (uint8_t)s;
            }
            c->msg_len += take;
        }
        p += take;
        n -= take;
        c->remaining -= take;
        if (c->remaining == 0) {
            c->in_payload = 0;
            on_frame(c, t);
        }
    }
}

/* ------------------------------------------------------------------ connections */
static int open_one(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        g_err_connect++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c->role == R_SLOW && g_slow_rcvbuf > 0) /* before connect: it sets the window scale */
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &g_slow_rcvbuf, sizeof g_slow_rcvbuf);
    if (g_src_ips > 1) {
        /* spread connections over loopback source addresses: a new connection then rarely
         * meets the server's TIME_WAIT entry of an earlier one with the same 4-tuple
         * (which costs a SYN retransmit: seconds), and 15,000+ connections fit easily */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(g_src_next++ % (uint64_t)g_src_ips));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            g_err_connect++;
            close(fd);
            return -1;
        }
    }
    int r = connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr);
    if (r < 0 && errno != EINPROGRESS) {
        g_err_connect++;
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    c->started_ns = now_ns();
    c->hdr_len = c->hdr_need = c->in_payload = 0;
    c->remaining = c->msg_len = 0;
    c->stamp_len = c->ctrl_len = 0;
    c->sent_ns = 0;
    c->head_len = 0;
    c->out_len = c->out_off = 0;
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        g_err_connect++;
        close(fd);
        c->state = C_DONE;
        return -1;
    }
    g_connecting++;
    return 0;
}

static void on_open(conn_t *c, uint64_t t) {
    hrecord(&g_hs_lat, t - c->started_ns);
    c->state = C_OPEN;
    g_connecting--;
    g_open_now++;
    g_opened++;
    free(c->head);
    c->head = NULL;
    if (g_mode == M_HANDSHAKE) { /* closing handshake right away */
        c->state = C_CLOSING;
        if (conn_write(c, g_close_frame, sizeof g_close_frame) < 0) conn_close(c);
        return;
    }
    if (g_mode == M_ECHO && g_rate <= 0 && g_measuring) { /* late joiner */
        c->sent_ns = t;
        if (send_message(c, 0) < 0) conn_close(c);
    }
}

static void on_head(conn_t *c, uint64_t t) {
    /* read the HTTP response head; the bytes after it are frames */
    char buf[MAX_HEAD];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        g_err_handshake++;
        conn_close(c);
        return;
    }
    if (n < 0) return;
    if (!c->head) c->head = xmalloc(MAX_HEAD + 1);
    size_t room = MAX_HEAD - c->head_len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(c->head + c->head_len, buf, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) {
        if (c->head_len >= MAX_HEAD) {
            g_err_handshake++;
            conn_close(c);
        }
        return;
    }
    *end = 0;
    if (strncmp(c->head, "HTTP/1.1 101", 12) != 0 || !strcasestr(c->head, "\nupgrade:") ||
        !strstr(c->head, WS_ACCEPT)) {
        if (g_err_handshake < 3) fprintf(stderr, "wsload: bad handshake: %.200s\n", c->head);
        g_err_handshake++;
        conn_close(c);
        return;
    }
    size_t head_bytes = (size_t)(end + 4 - c->head);
    size_t extra_in_head = c->head_len - head_bytes;
    /* frames that came with the head: those in c->head after the blank line, plus any
     * bytes of buf that did not fit (only when the head nearly filled MAX_HEAD) */
    uint8_t tail[MAX_HEAD];
    size_t tail_len = 0;
    memcpy(tail, c->head + head_bytes, extra_in_head);
    tail_len = extra_in_head;
    size_t rest = (size_t)n - take;
    on_open(c, t);
    if (tail_len) parse_frames(c, tail, tail_len, t);
    if (rest && c->state != C_DONE) parse_frames(c, (uint8_t *)buf + take, rest, t);
    if (c->state == C_OPEN || c->state == C_CLOSING) {
        if (conn_queued(c)) ep_set(c, want_in(c) | EPOLLOUT);
        else ep_set(c, want_in(c));
    }
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        if (g_err_connect < 3) fprintf(stderr, "wsload: connect: %s\n", strerror(err));
        g_err_connect++;
        conn_close(c);
        return;
    }
    c->state = C_UPGRADING;
    c->events = 0;
    if (conn_write(c, g_request, g_request_len) < 0) {
        g_err_connect++;
        conn_close(c);
        return;
    }
    if (!conn_queued(c)) ep_set(c, EPOLLIN);
}

static void handle_event(conn_t *c, uint32_t ev, uint8_t *rbuf, size_t rcap) {
    if (c->state == C_CONNECTING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
        return;
    }
    if (c->state == C_UPGRADING) {
        if (ev & EPOLLOUT) {
            if (conn_flush(c) < 0) {
                g_err_handshake++;
                conn_close(c);
                return;
            }
            if (!conn_queued(c)) ep_set(c, EPOLLIN);
        }
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_head(c, now_ns());
        return;
    }
    if (c->state != C_OPEN && c->state != C_CLOSING) return;
    if (ev & EPOLLOUT) {
        if (conn_flush(c) < 0) {
            if (c->state == C_OPEN && !g_stop) g_err_closed++;
            conn_close(c);
            return;
        }
    }
    if (c->role == R_SLOW && g_measuring && !(ev & EPOLLIN)) {
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            g_slow_closed++;
            conn_close(c);
        }
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        for (int rounds = 0; rounds < 4; rounds++) {
            ssize_t n = recv(c->fd, rbuf, rcap, 0);
            if (n > 0) {
                if (g_delack) {
                    int zero = 0;
                    setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
                }
                parse_frames(c, rbuf, (size_t)n, now_ns());
                if (c->state == C_DONE || (size_t)n < rcap) return;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            /* EOF or error */
            if (c->state == C_CLOSING) {
                if (g_mode == M_HANDSHAKE) {
                    g_handshakes++;
                    if (g_measuring) g_hs_window++;
                }
            } else if (!g_stop) {
                if (c->role == R_SLOW) g_slow_closed++;
                else g_err_closed++;
            }
            conn_close(c);
            return;
        }
    }
}

/* ------------------------------------------------------------------ open loop */
static void arm_timer(uint64_t at) {
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000ull);
    its.it_value.tv_nsec = (long)(at % 1000000000ull);
    if (!its.it_value.tv_sec && !its.it_value.tv_nsec) its.it_value.tv_nsec = 1;
    timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static conn_t *next_sender(void) {
    if (g_mode == M_FANOUT) return g_c[0].state == C_OPEN ? &g_c[0] : NULL;
    for (long tries = 0; tries < g_nc; tries++) {
        conn_t *c = &g_c[g_sched_rr++ % (uint64_t)g_nc];
        if (c->state == C_OPEN) return c;
    }
    return NULL;
}

static void run_schedule(uint64_t t) {
    int burst = 0;
    while (g_sched_next <= t && burst < 10000) {
        uint64_t intended = g_sched_next;
        g_sched_next += g_sched_interval;
        burst++;
        conn_t *c = next_sender();
        if (!c) {
            g_skipped++;
            continue;
        }
        if (t - intended > g_late_max) g_late_max = t - intended;
        if (conn_queued(c) > MAX_OUTQ) {
            g_skipped++;
            continue;
        }
        if (g_mode == M_ECHO) {
            if (c->ring_count >= RING) {
                g_skipped++;
                continue;
            }
            c->ring[(c->ring_head + c->ring_count) % RING] = intended;
            c->ring_count++;
            if (send_message(c, 0) < 0) conn_close(c);
        } else if (send_message(c, intended) < 0) {
            conn_close(c);
        }
    }
    if (g_sched_next <= t) g_sched_next = t + g_sched_interval; /* hopelessly behind */
    arm_timer(g_sched_next);
}

/* rooms, closed loop: keep --window messages in flight room-wide. Broadcast: members take
 * turns (round robin), one message each at most; fanout: the publisher sends them all. */
static void room_fill(uint64_t t) {
    long tries = 0;
    while (g_inflight < g_window && tries < g_nc) {
        conn_t *c;
        if (g_mode == M_FANOUT) {
            c = &g_c[0];
            if (c->state != C_OPEN) return;
            tries = 0;
        } else {
            c = &g_c[g_sched_rr++ % (uint64_t)g_nc];
            tries++;
            if (c->state != C_OPEN || c->inflight) continue;
        }
        c->inflight++;
        g_inflight++;
        c->sent_ns = t;
        if (send_message(c, t) < 0) {
            conn_close(c);
            if (g_mode == M_FANOUT) return;
        }
    }
}

/* start the closed loop on every open connection that should send */
static void kick_closed_loop(uint64_t t) {
    if (uses_stamp()) {
        room_fill(t);
        return;
    }
    for (long i = 0; i < g_nc; i++) {
        conn_t *c = &g_c[i];
        if (c->state != C_OPEN) continue;
        c->sent_ns = t;
        if (send_message(c, 0) < 0) conn_close(c);
    }
}

/* closed loop: a message that never came back (dropped by the server) is counted lost */
static void check_lost(uint64_t t) {
    uint64_t limit = (uint64_t)(g_msg_timeout * 1e9);
    for (long i = 0; i < g_nc; i++) {
        conn_t *c = &g_c[i];
        if (c->state != C_OPEN || !c->sent_ns || t - c->sent_ns < limit) continue;
        if (uses_stamp()) {
            if (!c->inflight) continue;
            g_lost += c->inflight;
            g_inflight -= c->inflight;
            c->inflight = 0;
            c->sent_ns = t;
            continue;
        }
        g_lost++;
        c->sent_ns = t;
        if (send_message(c, 0) < 0) conn_close(c);
    }
    if (uses_stamp()) room_fill(t);
}

/* ------------------------------------------------------------------ output */
static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* "name":{count, mean, p50, p90, p99, p999, max} in microseconds, or "name":null */
static void json_hist(FILE *f, const char *name, const hist_t *h) {
    if (!h->n) {
        fprintf(f, "\"%s\":null,", name);
        return;
    }
    fprintf(f,
            "\"%s\":{\"count\":%llu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
            "\"p999\":%.1f,\"max\":%.1f},",
            name, (unsigned long long)h->n, (double)(h->sum / h->n) / 1000.0, hpct(h, 50),
            hpct(h, 90), hpct(h, 99), hpct(h, 99.9), h->max / 1000.0);
}

static const char *mode_name(void) {
    static const char *names[] = {"echo", "broadcast", "fanout", "idle", "handshake"};
    return names[g_mode];
}

static void report(void) {
    double win = g_win_end > g_win_start ? (g_win_end - g_win_start) / 1e9 : 0;
    double ucpu = tv_s(g_ru1.ru_utime) - tv_s(g_ru0.ru_utime);
    double scpu = tv_s(g_ru1.ru_stime) - tv_s(g_ru0.ru_stime);
    uint64_t errors = g_err_connect + g_err_handshake + g_err_protocol + g_err_closed +
                      g_err_timeout + g_err_mismatch;
    FILE *f = stdout;
    fprintf(f, "{\"tool\":\"wsload\",\"version\":" VERSION ",\"label\":");
    json_str(f, g_label);
    fprintf(f, ",\"mode\":\"%s\",\"host\":", mode_name());
    json_str(f, g_host);
    fprintf(f, ",\"port\":%d,\"path\":", g_port);
    json_str(f, g_path);
    fprintf(f,
            ",\"connections\":%ld,\"connections_open\":%ld,\"connections_opened\":%ld,"
            "\"payload\":%ld,\"opcode\":\"%s\",\"loop\":\"%s\",\"rate\":%.1f,"
            "\"duration_s\":%.3f,\"ready_ms\":%ld,\"window\":%ld,",
            g_conns, g_open_at_stop, g_opened, g_size, g_binary ? "binary" : "text",
            g_rate > 0 ? "open" : "closed", g_rate, win, g_ready_at_ms,
            uses_stamp() && g_rate <= 0 ? g_window : 0);
    fprintf(f,
            "\"sent\":%llu,\"received\":%llu,\"msg_per_s\":%.1f,\"sent_per_s\":%.1f,"
            "\"bytes_per_s\":%.1f,\"sent_total\":%llu,\"received_total\":%llu,",
            (unsigned long long)g_sent, (unsigned long long)g_recv, win ? g_recv / win : 0,
            win ? g_sent / win : 0, win ? g_recv_bytes / win : 0,
            (unsigned long long)g_sent_all, (unsigned long long)g_recv_all);
    fprintf(f, "\"handshakes\":%llu,\"handshakes_per_s\":%.1f,",
            (unsigned long long)g_hs_window, win ? g_hs_window / win : 0);
    json_hist(f, "latency_us", &g_lat);
    json_hist(f, "handshake_latency_us", &g_hs_lat);
    fprintf(f,
            "\"errors\":%llu,\"error_detail\":{\"connect\":%llu,\"handshake\":%llu,"
            "\"protocol\":%llu,\"closed\":%llu,\"timeout\":%llu,\"mismatch\":%llu},"
            "\"lost\":%llu,\"skipped\":%llu,\"send_late_max_us\":%.1f,\"slow_closed\":%llu,"
            "\"pings\":%llu,",
            (unsigned long long)errors, (unsigned long long)g_err_connect,
            (unsigned long long)g_err_handshake, (unsigned long long)g_err_protocol,
            (unsigned long long)g_err_closed, (unsigned long long)g_err_timeout,
            (unsigned long long)g_err_mismatch, (unsigned long long)g_lost,
            (unsigned long long)g_skipped, g_late_max / 1000.0,
            (unsigned long long)g_slow_closed, (unsigned long long)g_pings);
    fprintf(f,
            "\"cpu\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"pct\":%.1f},\"stopped_by_signal\":%s}\n",
            ucpu, scpu, win ? 100.0 * (ucpu + scpu) / win : 0, g_stop == 2 ? "true" : "false");
    fflush(f);
}

/* ------------------------------------------------------------------ main */
static void usage(void) {
    fprintf(stderr,
            "usage: wsload [--mode echo|broadcast|fanout|idle|handshake] [--host 127.0.0.1]\n"
            "  [--port 8080] [--path /echo] [-c N] [-s BYTES] [--binary] [-d SECONDS]\n"
            "  [--warmup S] [--rate MSG_PER_S] [--concurrency C] [--slow 0|1] [--settle S]\n"
            "  [--connect-timeout S] [--msg-timeout S] [--label TEXT] [--delack]\n"
            "  [--window N] [--slow-rcvbuf BYTES] [--src-ips N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"mode", 1, 0, 'm'},        {"host", 1, 0, 'H'},    {"port", 1, 0, 'p'},
        {"path", 1, 0, 'P'},        {"connections", 1, 0, 'c'}, {"size", 1, 0, 's'},
        {"binary", 0, 0, 'b'},      {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},
        {"rate", 1, 0, 'r'},        {"concurrency", 1, 0, 'C'}, {"slow", 1, 0, 'S'},
        {"settle", 1, 0, 'e'},      {"connect-timeout", 1, 0, 'T'},
        {"msg-timeout", 1, 0, 'M'}, {"label", 1, 0, 'l'}, {"delack", 0, 0, 'A'},
        {"window", 1, 0, 'W'},      {"slow-rcvbuf", 1, 0, 'R'}, {"src-ips", 1, 0, 'I'},   {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "m:H:p:P:c:s:bd:w:r:C:S:e:T:M:l:AW:R:I:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm':
            if (!strcmp(optarg, "echo")) g_mode = M_ECHO;
            else if (!strcmp(optarg, "broadcast")) g_mode = M_BROADCAST;
            else if (!strcmp(optarg, "fanout")) g_mode = M_FANOUT;
            else if (!strcmp(optarg, "idle")) g_mode = M_IDLE;
            else if (!strcmp(optarg, "handshake")) g_mode = M_HANDSHAKE;
            else usage();
            break;
        case 'H': g_host = optarg; break;
        case 'p': g_port = atoi(optarg); break;
        case 'P': g_path = optarg; break;
        case 'c': g_conns = atol(optarg); break;
        case 's': g_size = atol(optarg); break;
        case 'b': g_binary = 1; break;
        case 'd': g_duration = atof(optarg); break;
        case 'w': g_warmup = atof(optarg); break;
        case 'r': g_rate = atof(optarg); break;
        case 'C': g_concurrency = atol(optarg); break;
        case 'S': g_slow = atoi(optarg); break;
        case 'e': g_settle = atof(optarg); break;
        case 'T': g_connect_timeout = atof(optarg); break;
        case 'M': g_msg_timeout = atof(optarg); break;
        case 'l': g_label = optarg; break;
        case 'A': g_delack = 1; break;
        case 'W': g_window = atol(optarg); break;
        case 'R': g_slow_rcvbuf = atoi(optarg); break;
        case 'I': g_src_ips = atoi(optarg); break;
        default: usage();
        }
    }
    if (!g_path) g_path = (g_mode == M_BROADCAST || g_mode == M_FANOUT) ? "/room" : "/echo";
    if (g_conns < 1 || g_conns > 1000000 || g_size < 0 || g_size > (64l << 20) ||
        g_duration <= 0 || g_duration > 3600 || g_warmup < 0 || g_rate < 0 ||
        g_concurrency < 1 || g_window < 1 || g_src_ips < 1 || g_src_ips > 254 || g_port < 1 || g_port > 65535 || strlen(g_path) > 512 ||
        g_path[0] != '/')
        usage();
    if (strpbrk(g_path, " \r\n")) usage();
    if (uses_stamp() && g_size < STAMP) g_size = STAMP; /* room for sender id + timestamp */
    if (g_mode == M_IDLE || g_mode == M_HANDSHAKE) g_warmup = 0;

    /* loopback only */
    if (!strcmp(g_host, "localhost")) g_host = "127.0.0.1";
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)g_port);
    if (inet_pton(AF_INET, g_host, &g_addr.sin_addr) != 1) die("--host must be an IPv4 loopback address");
    if ((ntohl(g_addr.sin_addr.s_addr) >> 24) != 127) die("refusing a non-loopback target (127.0.0.0/8 only)");

    g_nc = g_mode == M_FANOUT ? g_conns + 1 : g_mode == M_HANDSHAKE ? g_concurrency : g_conns;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)g_nc + 16 > rl.rlim_cur) {
        fprintf(stderr, "wsload: %ld connections need more than the open-file limit %llu\n", g_nc,
                (unsigned long long)rl.rlim_cur);
        exit(3);
    }

    g_request_len = (size_t)snprintf(g_request, sizeof g_request,
                                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                                     "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                                     "Sec-WebSocket-Version: 13\r\n\r\n",
                                     g_path, g_host, g_port);
    build_frames();

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g_ep < 0 || g_tfd < 0) die("epoll/timerfd");
    struct epoll_event te = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, g_tfd, &te);

    g_c = calloc((size_t)g_nc, sizeof(conn_t));
    if (!g_c) die("out of memory");
    for (long i = 0; i < g_nc; i++) {
        conn_t *c = &g_c[i];
        c->idx = (int)i;
        c->fd = -1;
        uint32_t r = (uint32_t)(i * 2654435761u) ^ 0x5bd1e995u;
        memcpy(c->key, &r, 4);
        c->role = g_mode == M_FANOUT ? (i == 0 ? R_PUBLISHER : (g_slow && i == g_nc - 1) ? R_SLOW
                                                                                       : R_SUBSCRIBER)
                                     : R_MEMBER;
        if (uses_stamp() && (g_mode == M_BROADCAST || c->role == R_PUBLISHER)) {
            c->frame = xmalloc(g_frame_len);
            memcpy(c->frame, g_frame, g_frame_len);
        }
        if (g_mode == M_ECHO && g_rate > 0) c->ring = xmalloc(RING * sizeof(uint64_t));
    }

    size_t rcap = 256 * 1024;
    uint8_t *rbuf = xmalloc(rcap);
    struct epoll_event evs[1024];
    g_t0 = now_ns();
    uint64_t connect_deadline = g_t0 + (uint64_t)(g_connect_timeout * 1e9);
    uint64_t t_all_open = 0, t_start = 0, t_end = 0, t_last_check = g_t0;
    int all_open = 0;
    if (g_mode == M_HANDSHAKE) { /* the window starts now: connecting is what we measure */
        t_start = g_t0;
        t_end = g_t0 + (uint64_t)(g_duration * 1e9);
        g_win_start = g_t0;
        g_measuring = 1;
        getrusage(RUSAGE_SELF, &g_ru0);
        phase("measure");
    }
    phase("connect");

    for (;;) {
        uint64_t t = now_ns();
        if (g_stop) break;
        /* open connections, at most --concurrency handshakes at a time */
        if (g_mode == M_HANDSHAKE) {
            if (t < t_end) {
                for (long i = 0; i < g_nc && g_connecting < g_concurrency; i++) {
                    conn_t *c = &g_c[i];
                    if (c->state == C_FREE || c->state == C_DONE) open_one(c);
                }
            }
        } else {
            while (g_next_to_open < g_nc && g_connecting < g_concurrency) {
                conn_t *c = &g_c[g_next_to_open++];
                open_one(c);
            }
        }
        /* connect phase over? */
        if (!all_open && g_mode != M_HANDSHAKE) {
            int settled = g_next_to_open >= g_nc && g_connecting == 0;
            if (settled || t > connect_deadline) {
                if (!settled) {
                    for (long i = 0; i < g_nc; i++)
                        if (g_c[i].state == C_CONNECTING || g_c[i].state == C_UPGRADING) {
                            g_err_timeout++;
                            conn_close(&g_c[i]);
                        }
                }
                all_open = 1;
                t_all_open = t;
                g_ready_at_ms = (long)((t - g_t0) / 1000000);
                if (g_open_now == 0) {
                    fprintf(stderr, "wsload: no connection could be opened\n");
                    break;
                }
                fprintf(stderr, "# phase ready %.3f %ld\n", (t - g_t0) / 1e9, g_open_now);
                fflush(stderr);
                double lead = (uses_stamp() ? g_settle : 0);
                t_start = t_all_open + (uint64_t)((lead + g_warmup) * 1e9);
                t_end = t_start + (uint64_t)(g_duration * 1e9);
                uint64_t go = t_all_open + (uint64_t)(lead * 1e9);
                if (g_mode != M_IDLE) {
                    /* start sending after the settle time (joins registered) */
                    if (g_rate > 0) {
                        g_sched_interval = (uint64_t)(1e9 / g_rate);
                        if (!g_sched_interval) g_sched_interval = 1;
                        g_sched_next = go;
                        arm_timer(go);
                    } else {
                        arm_timer(go);
                    }
                }
            }
        }
        if (all_open && !g_measuring && t >= t_start && g_mode != M_HANDSHAKE) {
            g_measuring = 1;
            g_win_start = t;
            getrusage(RUSAGE_SELF, &g_ru0);
            phase("measure");
            if (g_mode == M_FANOUT)
                for (long i = 0; i < g_nc; i++)
                    if (g_c[i].role == R_SLOW && g_c[i].state == C_OPEN) {
                        g_c[i].events = ~0u; /* force the update */
                        ep_set(&g_c[i], EPOLLRDHUP | (conn_queued(&g_c[i]) ? EPOLLOUT : 0));
                    }
        }
        if (g_measuring && t >= t_end) break;
        if (g_rate <= 0 && all_open && g_mode != M_IDLE && g_mode != M_HANDSHAKE &&
            t - t_last_check > 500000000ull) {
            t_last_check = t;
            check_lost(t);
        }
        if (g_mode == M_HANDSHAKE && t - t_last_check > 500000000ull) {
            t_last_check = t;
            uint64_t limit = (uint64_t)(g_msg_timeout * 1e9);
            for (long i = 0; i < g_nc; i++) {
                conn_t *c = &g_c[i];
                if ((c->state == C_CONNECTING || c->state == C_UPGRADING ||
                     c->state == C_CLOSING) && t - c->started_ns > limit) {
                    if (g_err_timeout < 3)
                        fprintf(stderr, "wsload: handshake timed out while %s\n",
                                c->state == C_CONNECTING ? "connecting"
                                : c->state == C_UPGRADING ? "waiting for 101"
                                                          : "waiting for the server's Close");
                    g_err_timeout++;
                    conn_close(c);
                }
            }
        }
        /* wait */
        uint64_t wake = g_measuring ? t_end : all_open ? t_start : t + 50000000ull;
        if (!all_open && g_mode != M_HANDSHAKE && connect_deadline < wake) wake = connect_deadline;
        int periodic = g_mode == M_HANDSHAKE ||
                       (g_rate <= 0 && all_open && g_mode != M_IDLE);
        if (periodic && t_last_check + 500000000ull < wake) wake = t_last_check + 500000001ull;
        long ms = wake > t ? (long)((wake - t + 999999) / 1000000) : 0;
        if (ms > 100) ms = 100;
        int n = epoll_wait(g_ep, evs, 1024, (int)ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) { /* timer: start the closed loop or run the open-loop schedule */
                uint64_t x;
                if (read(g_tfd, &x, sizeof x) < 0 && errno != EAGAIN) die("timerfd");
                if (g_rate > 0) run_schedule(now_ns());
                else kick_closed_loop(now_ns());
                continue;
            }
            handle_event(c, evs[i].events, rbuf, rcap);
        }
    }
    uint64_t t_stop = now_ns();
    g_open_at_stop = g_open_now;
    if (g_stop) g_stop = 2;
    else g_stop = 1;
    if (!g_measuring) {
        g_win_start = t_stop;
        getrusage(RUSAGE_SELF, &g_ru0);
    }
    g_win_end = t_stop;
    getrusage(RUSAGE_SELF, &g_ru1);
    g_measuring = 0;
    phase("done");

    /* closing handshakes: send Close, wait up to 1 s for the server's Close or EOF */
    long closing = 0;
    for (long i = 0; i < g_nc; i++) {
        conn_t *c = &g_c[i];
        if (c->state == C_OPEN) {
            c->state = C_CLOSING;
            if (c->role == R_SLOW) { /* unread data: just drop it */
                conn_close(c);
                continue;
            }
            if (conn_write(c, g_close_frame, sizeof g_close_frame) < 0) conn_close(c);
            else {
                ep_set(c, EPOLLIN | (conn_queued(c) ? EPOLLOUT : 0));
                closing++;
            }
        } else if (c->state != C_CLOSING) {
            conn_close(c);
        }
    }
    uint64_t close_deadline = now_ns() + 1000000000ull;
    while (g_open_now > 0 && now_ns() < close_deadline) {
        int n = epoll_wait(g_ep, evs, 1024, 50);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c) handle_event(c, evs[i].events, rbuf, rcap);
        }
    }
    for (long i = 0; i < g_nc; i++) conn_close(&g_c[i]);
    (void)closing;
    report();
    return 0;
}
