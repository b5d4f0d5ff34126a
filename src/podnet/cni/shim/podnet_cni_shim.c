/*
 * podnet_cni_shim.c: the `podnet` CNI executable's fast path, compiled.
 *
 * Why: the Python plugin (podnet/cni/plugin.py) is already a thin forwarder, but the
 * interpreter's start-up (~5 ms) alone is more than a Go plugin's whole exec (~2 ms).
 * This shim does exactly what plugin.py's fast path does, with libc only:
 *
 *   read stdin -> pick the agent's socket -> connect -> send the request frame with our
 *   namespace and the container's as SCM_RIGHTS -> read the reply -> print its payload
 *   untouched -> exit with its code.
 *
 * Everything else is the Python plugin's: when no agent listens (ENOENT, ECONNREFUSED)
 * or the shim is not sure it reads the config as plugin.py would, it execs the Python
 * plugin, installed beside it as `podnet-python` by podnet/install/cni.py (found next
 * to /proc/self/exe, so a bin dir installed under --root or moved still works), with
 * the stdin it already read as fd 0, so the fallback behaves exactly as it does today.
 * PODNET_CNI_PYTHON=1 in the environment forces the Python plugin (for comparison).
 *
 * Framing (podnet/rpc/wire.py): request = u32 meta length, meta, u32 body length, body
 * (big endian); reply = u32 exit code, u32 payload length, payload.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef FALLBACK_NAME
#define FALLBACK_NAME "podnet-python" /* the Python plugin, in the shim's own directory */
#endif
#ifndef PODNET_MARKER
#define PODNET_MARKER "podnet cni shim"
#endif

/* `podnet uninstall` removes only files whose first 4 KiB carry install-cni's marker
 * (PODNET_MARKER, with a stamp of this build): an ELF note, which the linker lays out at
 * the front of the file next to the build id. */
#define NOTE_NAME "podnet"
__attribute__((used, section(".note.podnet"), aligned(4))) static const struct {
    uint32_t namesz, descsz, type;
    char name[(sizeof NOTE_NAME + 3) & ~3];
    char desc[(sizeof PODNET_MARKER + 3) & ~3];
} marker_note = {sizeof NOTE_NAME, sizeof PODNET_MARKER, 1, NOTE_NAME, PODNET_MARKER};

#define DEFAULT_SOCKET "/run/podnet/agent.sock" /* wire.DEFAULT_SOCKET */
#define MAX_FRAME (16u * 1024 * 1024)           /* wire.MAX_FRAME */
#define AGENT_TIMEOUT 300                       /* plugin.AGENT_TIMEOUT, seconds */
#define CONNECT_PATIENCE_NS 10000000000LL       /* plugin.CONNECT_PATIENCE */
#define MAX_DEPTH 64 /* deeper configs: the Python plugin reads them */

extern char **environ;

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            static const char oom[] = "podnet cni shim: out of memory\n";
            (void)!write(2, oom, sizeof oom - 1);
            _exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, be, 4);
}

/* ---- JSON text as Python writes it ------------------------------------------------ */

/* One code point of `s` as Python's strict UTF-8 decoder reads it; a byte that starts
 * no valid sequence is U+DC80..U+DCFF on its own (surrogateescape, as os.environ and
 * plugin._environ decode). Returns the bytes used. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        goto bad;
    }
    if (n < len)
        goto bad;
    for (size_t i = 1; i < len; i++) {
        unsigned d = s[i];
        if (d < (i == 1 ? lo : 0x80) || d > (i == 1 ? hi : 0xBF))
            goto bad;
        v = v << 6 | (d & 0x3F);
    }
    *cp = v;
    return len;
bad:
    *cp = 0xDC00 + c;
    return 1;
}

static void put_u_escape(struct buf *b, uint32_t c)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', hex[c >> 12 & 15], hex[c >> 8 & 15], hex[c >> 4 & 15], hex[c & 15]};
    put(b, e, 6);
}

/* `s` as a JSON string, byte for byte what json.encoder.encode_basestring_ascii gives
 * for the str Python decodes from these bytes. */
static void put_json_string(struct buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        uint32_t c;
        i += utf8_next(u + i, n - i, &c);
        switch (c) {
        case '"': puts_(b, "\\\""); continue;
        case '\\': puts_(b, "\\\\"); continue;
        case '\b': puts_(b, "\\b"); continue;
        case '\f': puts_(b, "\\f"); continue;
        case '\n': puts_(b, "\\n"); continue;
        case '\r': puts_(b, "\\r"); continue;
        case '\t': puts_(b, "\\t"); continue;
        }
        if (c >= ' ' && c <= '~') {
            char ch = (char)c;
            put(b, &ch, 1);
        } else if (c >= 0x10000) { /* a surrogate pair, as Python writes it */
            c -= 0x10000;
            put_u_escape(b, 0xD800 | c >> 10);
            put_u_escape(b, 0xDC00 | (c & 0x3FF));
        } else {
            put_u_escape(b, c);
        }
    }
    put(b, "\"", 1);
}

/* ---- the two top-level config values the plugin reads ------------------------------ */

/* plugin.config_value, for "agentSocket" and "cniVersion". The shim decides only when
 * it reads the config exactly as Python's C scanner (strict) does: ASCII text, a
 * top-level object, no escapes in the keys or the two values, no NaN/Infinity, numbers
 * Python's int() takes. Anything else is "in doubt" (-1): the Python plugin runs. */
enum kind { ABSENT, STRING, OTHER };
struct value {
    enum kind kind;
    const char *p;
    size_t len;
    int escaped;
};
struct config {
    struct value sock, version;
};
struct scan {
    const char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int is_hex(char c) { return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'f'); }
static int is_digit(const struct scan *s) { return s->p < s->end && *s->p >= '0' && *s->p <= '9'; }

/* A string at s->p (its opening quote); its raw contents in v. */
static int scan_string(struct scan *s, struct value *v)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    const char *start = ++s->p;
    int escaped = 0;
    while (s->p < s->end && *s->p != '"') {
        unsigned char c = (unsigned char)*s->p++;
        if (c < 0x20) /* strict: no raw control characters */
            return -1;
        if (c == '\\') {
            escaped = 1;
            if (s->p >= s->end)
                return -1;
            char e = *s->p++;
            if (e == 'u') {
                if (s->end - s->p < 4 || !is_hex(s->p[0]) || !is_hex(s->p[1]) || !is_hex(s->p[2]) || !is_hex(s->p[3]))
                    return -1;
                s->p += 4;
            } else if (e == 0 || !strchr("\"\\/bfnrt", e)) {
                return -1;
            }
        }
    }
    if (s->p >= s->end)
        return -1;
    *v = (struct value){STRING, start, (size_t)(s->p - start), escaped};
    s->p++;
    return 0;
}

static int scan_literal(struct scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/* A number as _json's scanner matches it; -1 where Python's answer would differ (an
 * int too long for int()) or the scanner would stop at a '.' or 'e' without digits. */
static int scan_number(struct scan *s)
{
    const char *start = s->p;
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (!is_digit(s))
        return -1;
    if (*s->p++ != '0')
        while (is_digit(s))
            s->p++;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!is_digit(s))
            return -1;
        while (is_digit(s))
            s->p++;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!is_digit(s))
            return -1;
        while (is_digit(s))
            s->p++;
    }
    return s->p - start > 64 ? -1 : 0; /* 4300+ digits: int() raises; stay far below */
}

static int scan_value(struct scan *s, struct value *v, int depth);

/* An object or array at s->p; `top` gets the two values the plugin reads. */
static int scan_container(struct scan *s, int depth, struct config *top)
{
    char close = *s->p == '{' ? '}' : ']';
    s->p++;
    if (depth > MAX_DEPTH)
        return -1;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        struct value key = {ABSENT, 0, 0, 0}, val = {ABSENT, 0, 0, 0};
        if (close == '}') {
            if (scan_string(s, &key) < 0 || (top && key.escaped))
                return -1; /* an escaped key might spell one of ours */
            skip_ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return -1;
            skip_ws(s);
        }
        if (scan_value(s, &val, depth + 1) < 0)
            return -1;
        if (top && key.len == 11 && memcmp(key.p, "agentSocket", 11) == 0)
            top->sock = val; /* a repeated key: the last one wins, as in a dict */
        if (top && key.len == 10 && memcmp(key.p, "cniVersion", 10) == 0)
            top->version = val;
        skip_ws(s);
        if (s->p >= s->end)
            return -1;
        char c = *s->p++;
        if (c == close)
            return 0;
        if (c != ',')
            return -1;
        skip_ws(s);
    }
}

static int scan_value(struct scan *s, struct value *v, int depth)
{
    *v = (struct value){OTHER, 0, 0, 0};
    if (s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '"': return scan_string(s, v);
    case '{':
    case '[': return scan_container(s, depth, NULL);
    case 't': return scan_literal(s, "true");
    case 'f': return scan_literal(s, "false");
    case 'n': return scan_literal(s, "null");
    default: return scan_number(s); /* NaN, Infinity: in doubt */
    }
}

static int scan_config(const char *text, size_t n, struct config *cfg)
{
    *cfg = (struct config){{ABSENT, 0, 0, 0}, {ABSENT, 0, 0, 0}};
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)text[i] >= 0x80)
            return -1; /* UTF-8 and str.lstrip's Unicode spaces: Python's business */
    struct scan s = {text, text + n};
    /* str.lstrip(): the ASCII characters str.isspace() takes */
    while (s.p < s.end && ((*s.p >= '\t' && *s.p <= '\r') || (*s.p >= 0x1c && *s.p <= ' ')))
        s.p++;
    if (s.p >= s.end || *s.p != '{')
        return -1; /* not an object: rare, and Python words it */
    if (scan_container(&s, 0, cfg) < 0)
        return -1; /* what follows the object is never read, as in Python */
    if ((cfg->sock.kind == STRING && cfg->sock.escaped) || (cfg->version.kind == STRING && cfg->version.escaped))
        return -1;
    return 0;
}

/* ---- the request ------------------------------------------------------------------- */

struct call {
    struct buf in;         /* stdin, whole */
    const char *sock_path; /* the agent's socket */
    const char *version;   /* for the code-11 error: the config's cniVersion or 1.0.0 */
    size_t version_len;
};

/* Exec the Python plugin (same environment, same fd 0); if it cannot run, the install
 * is broken: say so as a CNI error. */
static void exec_python(void)
{
    char path[PATH_MAX + sizeof FALLBACK_NAME];
    ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
    int err = errno;
    if (n > 0) {
        while (n > 0 && path[n - 1] != '/') /* dirname (also of "... (deleted)") */
            n--;
        memcpy(path + n, FALLBACK_NAME, sizeof FALLBACK_NAME);
        char *argv[] = {path, NULL};
        execv(path, argv);
        err = errno;
    } else {
        strcpy(path, "/proc/self/exe");
    }
    struct buf out = {0};
    char msg[PATH_MAX + 256];
    snprintf(msg, sizeof msg, "podnet cni shim: cannot run the Python plugin %s: %s", path, strerror(err));
    puts_(&out, "{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":");
    put_json_string(&out, msg, strlen(msg));
    puts_(&out, "}\n");
    (void)!write(1, out.p, out.len);
    _exit(1);
}

/* Run the Python plugin instead, on the stdin we already read (a memfd as fd 0). */
static void run_python(const struct buf *in)
{
    int fd = memfd_create("podnet-cni-stdin", 0); /* may be fd 0 itself, if that was closed */
    size_t done = 0;
    while (fd >= 0 && done < in->len) {
        ssize_t n = write(fd, in->p + done, in->len - done);
        if (n < 0 && errno != EINTR)
            break;
        done += n > 0 ? (size_t)n : 0;
    }
    if (fd < 0 || done < in->len || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) {
        static const char msg[] = "podnet cni shim: cannot hand stdin to the Python plugin\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(1);
    }
    if (fd != 0)
        close(fd);
    exec_python();
}

/* plugin.try_again_later: the agent took the request and failed (died, hung, broke
 * the framing); the runtime should retry, and the restarted agent rolls back. */
static void try_again_later(const struct call *c, const char *detail)
{
    struct buf msg = {0}, out = {0};
    puts_(&msg, "the podnet agent at ");
    puts_(&msg, c->sock_path);
    puts_(&msg, " failed mid-request: ");
    puts_(&msg, detail);
    puts_(&out, "{\"cniVersion\":");
    put_json_string(&out, c->version, c->version_len);
    puts_(&out, ",\"code\":11,\"msg\":");
    put_json_string(&out, msg.p, msg.len);
    puts_(&out, "}\n");
    for (size_t done = 0; done < out.len;) {
        ssize_t n = write(1, out.p + done, out.len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        done += (size_t)n;
    }
    _exit(1);
}

/* str(OSError): "[Errno N] text" */
static void failed_os(const struct call *c, int err)
{
    char detail[256];
    snprintf(detail, sizeof detail, "[Errno %d] %s", err, strerror(err));
    try_again_later(c, detail);
}

/* A send or recv: EAGAIN is SO_SNDTIMEO/SO_RCVTIMEO running out, Python's
 * TimeoutError("timed out") under settimeout(AGENT_TIMEOUT). */
static void failed_io(const struct call *c, int err)
{
    if (err == EAGAIN)
        try_again_later(c, "timed out");
    failed_os(c, err);
}

static void read_stdin(struct buf *in)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) /* an error ends the input, as in plugin._read_stdin */
            return;
        put(in, chunk, (size_t)n);
    }
}

/* plugin._meta: {"op":"cni","env":{...every CNI_* variable...}}, in environment order;
 * a name set twice counts once, with its first value (as posix.environ has it). */
static void build_meta(struct buf *meta)
{
    puts_(meta, "{\"op\":\"cni\",\"env\":{");
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, "CNI_", 4) != 0)
            continue;
        size_t klen = (size_t)(eq - *e);
        int seen = 0;
        for (char **f = environ; f < e && !seen; f++)
            seen = strncmp(*f, *e, klen + 1) == 0;
        if (seen)
            continue;
        if (!first)
            put(meta, ",", 1);
        first = 0;
        put_json_string(meta, *e, klen);
        put(meta, ":", 1);
        put_json_string(meta, eq + 1, strlen(eq + 1));
    }
    puts_(meta, "}}");
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* plugin._connect: nothing listening runs the Python plugin; a full accept backlog
 * (EAGAIN) is waited out with backoff for up to CONNECT_PATIENCE. */
static int connect_agent(const struct call *c)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(c->sock_path);
    if (len > sizeof addr.sun_path)
        run_python(&c->in); /* Python words this one ("AF_UNIX path too long") */
    memcpy(addr.sun_path, c->sock_path, len);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0)
        failed_os(c, errno);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int64_t delay = 2000000, deadline = now_ns() + CONNECT_PATIENCE_NS;
    while (connect(sock, (struct sockaddr *)&addr, alen) < 0) {
        int err = errno;
        if (err == ENOENT || err == ECONNREFUSED) {
            close(sock);
            run_python(&c->in); /* no agent: the in-process fallback */
        }
        if (err == EINTR)
            continue;
        if (err != EAGAIN || now_ns() > deadline)
            failed_os(c, err); /* BlockingIOError: "[Errno 11] Resource temporarily unavailable" */
        struct timespec t = {0, delay};
        nanosleep(&t, NULL);
        delay = delay * 2 < 100000000 ? delay * 2 : 100000000;
    }
    /* Blocking from here, each send/recv bounded by AGENT_TIMEOUT (settimeout). */
    struct timeval tv = {AGENT_TIMEOUT, 0};
    if (fcntl(sock, F_SETFL, 0) < 0 || setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        failed_os(c, errno);
    return sock;
}

/* wire.send: the whole frame; the fds ride on the first sendmsg. */
static void send_frame(const struct call *c, int sock, const struct buf *frame, const int *fds, int nfds)
{
    union {
        char space[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {frame->p, frame->len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    ssize_t n;
    while ((n = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (n < 0)
        failed_io(c, errno);
    for (size_t done = (size_t)n; done < frame->len;) {
        n = send(sock, frame->p + done, frame->len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            failed_io(c, errno);
        done += (size_t)n;
    }
}

/* wire.recv_exact */
static void recv_exact(const struct call *c, int sock, char *into, size_t size)
{
    for (size_t got = 0; got < size;) {
        ssize_t n = recv(sock, into + got, size - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            failed_io(c, errno);
        if (n == 0)
            try_again_later(c, "peer closed the connection mid-message");
        got += (size_t)n;
    }
}

int main(void)
{
    const char *force = getenv("PODNET_CNI_PYTHON");
    if (force && *force)
        exec_python(); /* the Python plugin, on the stdin it was given */
    struct call c = {.version = "1.0.0", .version_len = 5};
    read_stdin(&c.in);
    put(&c.in, "", 1); /* a NUL after the text, for memmem and the socket path */
    c.in.len--;

    /* plugin.config_value looks for the key's bytes before it parses anything */
    int has_sock = memmem(c.in.p, c.in.len, "agentSocket", 11) != NULL;
    int has_version = memmem(c.in.p, c.in.len, "cniVersion", 10) != NULL;
    struct config cfg = {{ABSENT, 0, 0, 0}, {ABSENT, 0, 0, 0}};
    if ((has_sock || has_version) && scan_config(c.in.p, c.in.len, &cfg) < 0)
        run_python(&c.in);
    if (has_version && cfg.version.kind == STRING && cfg.version.len) {
        c.version = cfg.version.p;
        c.version_len = cfg.version.len;
    }
    const char *env_sock = getenv("PODNET_AGENT_SOCKET");
    c.sock_path = DEFAULT_SOCKET;
    if (env_sock && *env_sock) {
        c.sock_path = env_sock;
    } else if (has_sock && cfg.sock.kind == STRING && cfg.sock.len) {
        c.sock_path = strndup(cfg.sock.p, cfg.sock.len); /* no escapes: the bytes are the path */
        if (!c.sock_path)
            failed_os(&c, ENOMEM);
    }

    /* plugin._open_fds: our namespace (where the host side lands), and the container's
     * when it opens (the agent judges the rest). */
    int fds[2], nfds = 0;
    if ((fds[nfds++] = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
        run_python(&c.in); /* Python words the error, path and all */
    const char *netns = getenv("CNI_NETNS");
    if (netns && *netns && (fds[nfds] = open(netns, O_RDONLY | O_CLOEXEC)) >= 0)
        nfds++;

    struct buf meta = {0}, frame = {0};
    build_meta(&meta);
    int sock = connect_agent(&c);
    put_u32(&frame, (uint32_t)meta.len);
    put(&frame, meta.p, meta.len);
    put_u32(&frame, (uint32_t)c.in.len);
    put(&frame, c.in.p, c.in.len);
    send_frame(&c, sock, &frame, fds, nfds);

    unsigned char head[8];
    recv_exact(&c, sock, (char *)head, sizeof head);
    uint32_t code = (uint32_t)head[0] << 24 | head[1] << 16 | head[2] << 8 | head[3];
    uint32_t length = (uint32_t)head[4] << 24 | head[5] << 16 | head[6] << 8 | head[7];
    if (length > MAX_FRAME) {
        char detail[64];
        snprintf(detail, sizeof detail, "reply of %u bytes is too large", length);
        try_again_later(&c, detail);
    }
    char *payload = malloc(length ? length : 1);
    if (!payload)
        failed_os(&c, ENOMEM);
    recv_exact(&c, sock, payload, length);
    close(sock);

    for (size_t done = 0; done < length;) {
        ssize_t n = write(1, payload + done, length - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            _exit(1); /* the Python plugin dies of the OSError: exit status 1 */
        done += (size_t)n;
    }
    /* posix._exit(code): a code beyond a C int raises OverflowError there (status 1) */
    _exit(code > INT_MAX ? 1 : (int)code);
}
