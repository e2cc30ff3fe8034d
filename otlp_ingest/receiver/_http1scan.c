/* The request heads the HTTP/1.1 fast path serves: the C side of receiver/http1_fast.py.
 *
 *     scan(data, start, max_body) -> (signal, head_end, content_length) | None
 *
 * Looks at the request that starts at data[start:] and answers a tuple only when its head is
 * complete in `data` and of the one plain form OTLP/HTTP exporters send; its body is then
 * data[head_end:head_end + content_length] (which may not all have arrived yet). Anything else
 * answers None and the connection hands the bytes to llhttp, which parses them as always: so
 * every form accepted here must mean the same to llhttp, and everything doubtful is refused.
 *
 * Accepted, byte for byte:
 *
 *   request line   "POST " path " HTTP/1.1" CRLF, path one of ROUTES (signal = its index + 1,
 *                  the values of otlp_ingest.otlp.signals.Signal)
 *   header line    name ":" OWS value OWS CRLF; name: 1+ token characters (RFC 9110 5.6.2);
 *                  value: visible ASCII, space and tab only (no obs-text, no obs-fold)
 *   end of head    CRLF, at most MAX_HEAD bytes from the request line
 *
 * and the headers must say: Content-Length exactly once, 1-10 digits, at most max_body;
 * Content-Type exactly once, "application/x-protobuf" (any case, no parameters); Connection, if
 * present, exactly "keep-alive" (any case). Transfer-Encoding, Content-Encoding, Expect,
 * Upgrade and Proxy-Connection are refused whatever their value; every other header is
 * ignored, as the general path ignores it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEAD 8192

static const char *const ROUTES[] = {"POST /v1/traces HTTP/1.1\r\n", "POST /v1/metrics HTTP/1.1\r\n",
                                     "POST /v1/logs HTTP/1.1\r\n"};
#define N_ROUTES 3

/* RFC 9110 tchar */
static int is_token(uint8_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Case-insensitive equality of [p, p + n) with the lower-case `word`. */
static int equals(const uint8_t *p, Py_ssize_t n, const char *word) {
    if ((size_t)n != strlen(word)) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
        if (c != (uint8_t)word[i]) return 0;
    }
    return 1;
}

static const char *const REFUSED[] = {"transfer-encoding", "content-encoding", "expect", "upgrade",
                                      "proxy-connection"};
#define N_REFUSED 5

/* 1 and the head's parts when [p, end) starts with a head of the accepted form; else 0. */
static int scan_head(const uint8_t *p, const uint8_t *end, long long max_body, int *route,
                     Py_ssize_t *head_length, long long *content_length) {
    const uint8_t *start = p;
    if (end - p > MAX_HEAD) end = p + MAX_HEAD;
    *route = -1;
    for (int i = 0; i < N_ROUTES; i++) {
        size_t n = strlen(ROUTES[i]);
        if ((size_t)(end - p) >= n && memcmp(p, ROUTES[i], n) == 0) {
            *route = i;
            p += n;
            break;
        }
    }
    if (*route < 0) return 0;
    int lengths = 0, types = 0;
    for (;;) {
        if (end - p < 2) return 0; /* incomplete, or longer than MAX_HEAD */
        if (p[0] == '\r' && p[1] == '\n') {
            p += 2;
            break;
        }
        const uint8_t *name = p;
        while (p < end && is_token(*p)) p++;
        Py_ssize_t name_length = p - name;
        if (name_length == 0 || p == end || *p != ':') return 0;
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const uint8_t *value = p;
        while (p < end && ((*p >= 0x20 && *p < 0x7f) || *p == '\t')) p++;
        const uint8_t *value_end = p;
        while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t')) value_end--;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return 0; /* a bare LF, a control byte, ... */
        p += 2;
        Py_ssize_t value_length = value_end - value;
        if (equals(name, name_length, "content-length")) {
            if (++lengths > 1 || value_length < 1 || value_length > 10) return 0;
            long long n = 0;
            for (Py_ssize_t i = 0; i < value_length; i++) {
                if (value[i] < '0' || value[i] > '9') return 0;
                n = n * 10 + (value[i] - '0');
            }
            if (n > max_body) return 0;
            *content_length = n;
        } else if (equals(name, name_length, "content-type")) {
            if (++types > 1 || !equals(value, value_length, "application/x-protobuf")) return 0;
        } else if (equals(name, name_length, "connection")) {
            if (!equals(value, value_length, "keep-alive")) return 0;
        } else {
            for (int i = 0; i < N_REFUSED; i++) {
                if (equals(name, name_length, REFUSED[i])) return 0;
            }
        }
    }
    if (lengths != 1 || types != 1) return 0;
    *head_length = p - start;
    return 1;
}

/* scan(data, start, max_body): METH_FASTCALL, as it runs once per read. */
static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan(data: bytes, start: int, max_body: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    long long max_body = PyLong_AsLongLong(args[2]);
    if ((start == -1 || max_body == -1) && PyErr_Occurred()) {
        return NULL;
    }
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "start outside the data");
        return NULL;
    }
    int route;
    Py_ssize_t head_length;
    long long content_length = 0;
    if (!scan_head(data + start, data + size, max_body, &route, &head_length, &content_length)) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(inL)", route + 1, start + head_length, content_length);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, start, max_body) -> (signal, head_end, content_length) for a plain OTLP request head, "
     "else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_http1scan", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__http1scan(void) { return PyModule_Create(&module); }
