/* The records of the two sinks that read the serving thread's tuples, a whole batch per call, in C: native query
 * log lines (observe/formats.py, NativeLines.into: the same bytes as NativeLines.text(batch).encode()) and dnstap
 * frames (observe/dnstap.py, DnstapSink.frames_into: the same bytes as DnstapSink.raw_frames(batch)).
 *
 * Python makes what is the same for every query of one client and of one answer (memos of parts keyed by the
 * objects' ids, filled by Python callbacks on a miss) and the log's time stamp of each second; this looks them
 * up, formats the per-query numbers (latency, query ID, response size; dnstap's times and lengths) and copies the
 * pieces into the caller's bytearray, which is kept from batch to batch: no Python object is made per query, and
 * the output's memory is not allocated (and faulted in by the kernel) anew for every batch. Each function returns
 * the number of bytes made, or None when a piece is not what it expects (a part that is not ASCII text, which
 * json.dumps never makes; a time that is not a positive float): then the caller uses the Python path.
 * Built optionally, like _udpbatch; tests/observe/test_sink_fast_paths.py holds both paths to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The caller's bytearray as an output buffer: its size is the capacity (only ever grown, never shrunk, so the
 * memory stays mapped between batches); `length` is what is made so far. */
typedef struct {
    PyObject *out;
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
} Buffer;

static int buffer_open(Buffer *buffer, PyObject *out) {
    buffer->out = out;
    buffer->data = PyByteArray_AS_STRING(out);
    buffer->length = 0;
    buffer->capacity = PyByteArray_GET_SIZE(out);
    return 0;
}

/* Room for `size` more bytes; -1 with an exception when the bytearray cannot grow (a view of it is held). */
static inline int buffer_room(Buffer *buffer, Py_ssize_t size) {
    if (buffer->length + size <= buffer->capacity) return 0;
    Py_ssize_t capacity = buffer->capacity * 2;
    if (capacity < buffer->length + size) capacity = buffer->length + size;
    if (capacity < 65536) capacity = 65536;
    if (PyByteArray_Resize(buffer->out, capacity) < 0) return -1;
    buffer->data = PyByteArray_AS_STRING(buffer->out);
    buffer->capacity = capacity;
    return 0;
}

static inline int buffer_add(Buffer *buffer, const char *text, Py_ssize_t length) {
    if (buffer_room(buffer, length) < 0) return -1;
    memcpy(buffer->data + buffer->length, text, (size_t)length);
    buffer->length += length;
    return 0;
}

/* 1: added; 0: not ASCII text (the caller gives up); -1: error. */
static inline int buffer_add_ascii(Buffer *buffer, PyObject *text) {
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) return 0;
    return buffer_add(buffer, (const char *)PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)) < 0 ? -1 : 1;
}

/* 1: added; 0: not bytes; -1: error. */
static inline int buffer_add_bytes(Buffer *buffer, PyObject *data) {
    if (!PyBytes_Check(data)) return 0;
    return buffer_add(buffer, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0 ? -1 : 1;
}

/* `value` in decimal, as str(int) writes it; the number of characters written to `out` (at least 20 long). */
static inline int decimal(char *out, unsigned long long value) {
    char digits[20];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (int i = 0; i < count; i++) out[i] = digits[count - 1 - i];
    return count;
}

/* Protocol Buffers' base-128 varint; the number of bytes written to `out` (at least 10 long). */
static inline int varint(unsigned char *out, unsigned long long value) {
    int count = 0;
    while (value > 0x7F) {
        out[count++] = (unsigned char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    out[count++] = (unsigned char)value;
    return count;
}

/* f"{milliseconds:.3f}" for 0 <= milliseconds < 1e9: the value rounded to thousandths from its double product
 * with 1000, whose error (< 2e-4 here) can change the result only near a half; there, and out of that range,
 * CPython's own formatting (correctly rounded, ties to even) is used. -1 with an exception on error. */
static int add_milliseconds(Buffer *buffer, double milliseconds) {
    char text[48];
    int length;
    if (milliseconds >= 0.0 && milliseconds < 1e9 && !signbit(milliseconds)) {
        double thousandths = milliseconds * 1000.0;
        double whole = floor(thousandths);
        double fraction = thousandths - whole;
        if (fabs(fraction - 0.5) > 1e-3) {
            unsigned long long rounded = (unsigned long long)whole + (fraction > 0.5);
            length = decimal(text, rounded / 1000);
            unsigned fraction_digits = (unsigned)(rounded % 1000);
            text[length++] = '.';
            text[length++] = (char)('0' + fraction_digits / 100);
            text[length++] = (char)('0' + fraction_digits / 10 % 10);
            text[length++] = (char)('0' + fraction_digits % 10);
            return buffer_add(buffer, text, length);
        }
    }
    char *made = PyOS_double_to_string(milliseconds, 'f', 3, 0, NULL);
    if (made == NULL) return -1;
    int added = buffer_add(buffer, made, (Py_ssize_t)strlen(made));
    PyMem_Free(made);
    return added;
}

/* The memo's entry for `object` (a list whose first item is `object`, at least `size` long), else make(object)'s;
 * a new reference, NULL on error, Py_None when what make returned does not have that shape. */
static PyObject *parts_of(PyObject *memo, PyObject *object, PyObject *make, Py_ssize_t size) {
    PyObject *key = PyLong_FromVoidPtr(object);
    if (key == NULL) return NULL;
    PyObject *parts = PyDict_GetItemWithError(memo, key); /* borrowed */
    Py_DECREF(key);
    if (parts == NULL && PyErr_Occurred()) return NULL;
    if (parts != NULL && PyList_Check(parts) && PyList_GET_SIZE(parts) >= size && PyList_GET_ITEM(parts, 0) == object)
        return Py_NewRef(parts);
    parts = PyObject_CallOneArg(make, object);
    if (parts == NULL) return NULL;
    if (!PyList_Check(parts) || PyList_GET_SIZE(parts) < size || PyList_GET_ITEM(parts, 0) != object) {
        Py_DECREF(parts);
        return Py_NewRef(Py_None);
    }
    return parts;
}

/* The last few objects' parts, looked up without a dict (16 clients asking in turn hit it): each slot holds its
 * object's parts (a new reference, dropped by cache_clear) and the object's address. */
#define CACHE_SLOTS 64
typedef struct {
    PyObject *object[CACHE_SLOTS];
    PyObject *parts[CACHE_SLOTS];
} Cache;

static inline Py_ssize_t cache_slot(PyObject *object) { return (Py_ssize_t)(((uintptr_t)object >> 4) % CACHE_SLOTS); }

/* parts_of through the cache: a borrowed reference (the cache keeps it until cache_clear), NULL on error, Py_None
 * when what make returned does not have the shape. */
static PyObject *cached_parts(Cache *cache, PyObject *memo, PyObject *object, PyObject *make, Py_ssize_t size) {
    Py_ssize_t slot = cache_slot(object);
    if (cache->object[slot] == object) return cache->parts[slot];
    PyObject *parts = parts_of(memo, object, make, size);
    if (parts == NULL || parts == Py_None) {
        Py_XDECREF(parts);
        return parts == NULL ? NULL : Py_None;
    }
    Py_XDECREF(cache->parts[slot]);
    cache->object[slot] = object; /* alive: its parts (held) hold it */
    cache->parts[slot] = parts;
    return parts;
}

static void cache_clear(Cache *cache) {
    for (int slot = 0; slot < CACHE_SLOTS; slot++) Py_CLEAR(cache->parts[slot]);
}

/* One item of a batch: (time, client, answer, latency, query bytes, response bytes | None), borrowed. */
typedef struct {
    PyObject *when, *client, *answer, *latency, *query, *response;
} Query;

/* 1: the batch's item `index` has that shape (then `query` holds its members); 0: it does not. */
static int query_at(PyObject *batch, Py_ssize_t index, Query *query) {
    PyObject *item = PyList_GET_ITEM(batch, index);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) return 0;
    query->when = PyTuple_GET_ITEM(item, 0);
    query->client = PyTuple_GET_ITEM(item, 1);
    query->answer = PyTuple_GET_ITEM(item, 2);
    query->latency = PyTuple_GET_ITEM(item, 3);
    query->query = PyTuple_GET_ITEM(item, 4);
    query->response = PyTuple_GET_ITEM(item, 5);
    if (!PyFloat_Check(query->when) || !PyFloat_Check(query->latency) || !PyBytes_Check(query->query)) return 0;
    return query->response == Py_None || PyBytes_Check(query->response);
}

/* The tuples a batch's items are were made by the serving thread up to a feed's interval ago, and are rarely still
 * in the CPU's cache: ask for the tuple `AHEAD` items on and for the members of the one half as far on, so that
 * their loads overlap with the work on this one instead of each waiting in turn. */
#define AHEAD 8
static inline void prefetch(PyObject *batch, Py_ssize_t index, Py_ssize_t count) {
    if (index + AHEAD < count) __builtin_prefetch(PyList_GET_ITEM(batch, index + AHEAD));
    if (index + AHEAD / 2 < count) {
        PyObject *item = PyList_GET_ITEM(batch, index + AHEAD / 2);
        if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 6)
            for (int member = 0; member < 6; member++) __builtin_prefetch(PyTuple_GET_ITEM(item, member));
    }
}

/* The end of the items from *start to stop that the batch has (*start raised to 0 if below). */
static Py_ssize_t clamp(PyObject *batch, Py_ssize_t *start, Py_ssize_t stop) {
    Py_ssize_t size = PyList_GET_SIZE(batch);
    if (*start < 0) *start = 0;
    if (stop > size) stop = size;
    return stop < *start ? *start : stop;
}

/* What a batch function returns for `status`: 1 the number of bytes made, 0 None (the caller uses Python), -1
 * NULL (the exception is set). */
static PyObject *made(int status, Py_ssize_t length) {
    if (status < 0) return NULL;
    return status ? PyLong_FromSsize_t(length) : Py_NewRef(Py_None);
}

/* native(batch, start, stop, clients, answers, client_parts, answer_parts, second_of, out) -> int | None
 * batch: list of (time, client, answer, latency, query bytes, response bytes | None), of which the items from
 * start to stop are made (the caller does not slice: a slice would take and drop a reference to each tuple);
 * clients: {id(client): [client, head, between]}, client_parts(client) -> such a list (and remembers it);
 * answers: {id(answer): [answer, members, tail]}, answer_parts(answer) likewise;
 * second_of(second) -> the line's start up to the time stamp's milliseconds, for that second (since the epoch);
 * out: a bytearray the lines are written to from its start (grown when too small). */
static PyObject *lines_native(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *batch, *clients, *answers, *client_parts, *answer_parts, *second_of, *out;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "O!nnO!O!OOOO!", &PyList_Type, &batch, &start, &stop, &PyDict_Type, &clients,
                          &PyDict_Type, &answers, &client_parts, &answer_parts, &second_of, &PyByteArray_Type, &out))
        return NULL;
    Buffer buffer;
    buffer_open(&buffer, out);
    Cache by_clients = {{NULL}, {NULL}}, by_answers = {{NULL}, {NULL}};
    PyObject *stamp = NULL; /* second_of's, for stamp_second */
    long long stamp_second = -1;
    int status = 1;
    Py_ssize_t count = clamp(batch, &start, stop);
    if (buffer_room(&buffer, (count - start) * 640 + 64) < 0) return NULL;
    for (Py_ssize_t i = start; i < count; i++) {
        Query item;
        prefetch(batch, i, count);
        if (!query_at(batch, i, &item)) {
            status = 0;
            break;
        }
        PyObject *when = item.when, *client = item.client, *answer = item.answer, *latency = item.latency;
        PyObject *query = item.query, *response = item.response;
        PyObject *by_client = cached_parts(&by_clients, clients, client, client_parts, 3);
        PyObject *by_answer = by_client == NULL || by_client == Py_None
                                  ? by_client
                                  : cached_parts(&by_answers, answers, answer, answer_parts, 3);
        if (by_answer == NULL || by_answer == Py_None) {
            status = by_answer == NULL ? -1 : 0;
            break;
        }
        double seconds = PyFloat_AS_DOUBLE(when);
        if (!(seconds >= 0.0 && seconds < 1e15)) { /* Python says what it does with such a time */
            status = 0;
            break;
        }
        long long milli = (long long)(seconds * 1000.0); /* int(when * 1000), as Clock.format */
        if (stamp == NULL || milli / 1000 != stamp_second) {
            Py_XDECREF(stamp);
            stamp_second = milli / 1000;
            PyObject *second = PyLong_FromLongLong(stamp_second);
            stamp = second == NULL ? NULL : PyObject_CallOneArg(second_of, second);
            Py_XDECREF(second);
        }
        int added = stamp == NULL ? -1 : buffer_add_ascii(&buffer, stamp);
        if (added == 1) {
            unsigned fraction = (unsigned)(milli % 1000);
            char text[] = {'.', (char)('0' + fraction / 100), (char)('0' + fraction / 10 % 10),
                           (char)('0' + fraction % 10), 'Z', '"', ',', ' '};
            added = buffer_add(&buffer, text, sizeof text) < 0 ? -1 : 1;
        }
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_client, 1));
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_answer, 1));
        if (added == 1) added = add_milliseconds(&buffer, PyFloat_AS_DOUBLE(latency) * 1000.0) < 0 ? -1 : 1;
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_client, 2));
        if (added == 1) {
            char numbers[64];
            int length;
            if (PyBytes_GET_SIZE(query) >= 2) {
                const unsigned char *id = (const unsigned char *)PyBytes_AS_STRING(query);
                length = decimal(numbers, (unsigned)(id[0] << 8 | id[1]));
            } else {
                memcpy(numbers, "null", 4);
                length = 4;
            }
            static const char size_name[] = ", \"response_size\": ";
            memcpy(numbers + length, size_name, sizeof size_name - 1);
            length += (int)sizeof size_name - 1;
            length += decimal(numbers + length, response == Py_None ? 0 : (unsigned long long)PyBytes_GET_SIZE(response));
            added = buffer_add(&buffer, numbers, length) < 0 ? -1 : 1;
        }
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_answer, 2));
        if (added != 1) {
            status = added;
            break;
        }
    }
    Py_XDECREF(stamp);
    cache_clear(&by_clients);
    cache_clear(&by_answers);
    return made(status, buffer.length);
}

/* A dnstap frame: the big-endian length, the envelope (Dnstap up to its message's tag), the message's length,
 * the message's fields `start` + `times`, then `wire` as the field whose tag is `tag`. */
static int add_frame(Buffer *buffer, const char *envelope, Py_ssize_t envelope_length, PyObject *start,
                     const unsigned char *times, int times_length, unsigned char tag, PyObject *wire) {
    unsigned char head[11], length_field[10], frame_length[4];
    Py_ssize_t wire_length = PyBytes_GET_SIZE(wire);
    head[0] = tag;
    int head_length = 1 + varint(head + 1, (unsigned long long)wire_length);
    Py_ssize_t length = PyBytes_GET_SIZE(start) + times_length + head_length + wire_length;
    int length_length = varint(length_field, (unsigned long long)length);
    unsigned long long total = (unsigned long long)(envelope_length + length_length + length);
    if (total > 0xFFFFFFFFu) return 0;
    frame_length[0] = (unsigned char)(total >> 24);
    frame_length[1] = (unsigned char)(total >> 16);
    frame_length[2] = (unsigned char)(total >> 8);
    frame_length[3] = (unsigned char)total;
    if (buffer_room(buffer, 4 + (Py_ssize_t)total) < 0) return -1;
    char *at = buffer->data + buffer->length;
    memcpy(at, frame_length, 4);
    at += 4;
    memcpy(at, envelope, (size_t)envelope_length);
    at += envelope_length;
    memcpy(at, length_field, (size_t)length_length);
    at += length_length;
    memcpy(at, PyBytes_AS_STRING(start), (size_t)PyBytes_GET_SIZE(start));
    at += PyBytes_GET_SIZE(start);
    memcpy(at, times, (size_t)times_length);
    at += times_length;
    memcpy(at, head, (size_t)head_length);
    at += head_length;
    memcpy(at, PyBytes_AS_STRING(wire), (size_t)wire_length);
    buffer->length += 4 + (Py_ssize_t)total;
    return 1;
}

/* A time's seconds as a varint field with tag `seconds_tag` and its nanoseconds as a fixed32 field with tag
 * `nanos_tag`, as dnstap.py writes them (int(t), int(t % 1 * 1e9)); the number of bytes, 0 for a time that is not
 * positive and finite (the Python path then says what it does with it). */
static int add_time(unsigned char *out, double when, unsigned char seconds_tag, unsigned char nanos_tag) {
    if (!(when > 0.0 && when < 1e15)) return 0;
    int length = 0;
    out[length++] = seconds_tag;
    length += varint(out + length, (unsigned long long)when);
    uint32_t nanos = (uint32_t)(fmod(when, 1.0) * 1e9);
    out[length++] = nanos_tag;
    out[length++] = (unsigned char)nanos;
    out[length++] = (unsigned char)(nanos >> 8);
    out[length++] = (unsigned char)(nanos >> 16);
    out[length++] = (unsigned char)(nanos >> 24);
    return length;
}

/* dnstap(batch, start, stop, clients, client_fields, envelope, out) -> int | None
 * batch, start, stop: as for native; clients: {id(client): [client, query start, response start]} (bytes: a CLIENT_QUERY's
 * and a CLIENT_RESPONSE's fields up to the times), client_fields(client) -> such a list; envelope: bytes of the
 * Dnstap message up to its message field's length; out: as for native. */
static PyObject *lines_dnstap(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *batch, *clients, *client_fields, *envelope, *out;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "O!nnO!OO!O!", &PyList_Type, &batch, &start, &stop, &PyDict_Type, &clients,
                          &client_fields, &PyBytes_Type, &envelope, &PyByteArray_Type, &out))
        return NULL;
    Buffer buffer;
    buffer_open(&buffer, out);
    Cache by_clients = {{NULL}, {NULL}};
    int status = 1;
    const char *envelope_data = PyBytes_AS_STRING(envelope);
    Py_ssize_t envelope_length = PyBytes_GET_SIZE(envelope);
    Py_ssize_t count = clamp(batch, &start, stop);
    for (Py_ssize_t i = start; i < count; i++) {
        Query item;
        prefetch(batch, i, count);
        if (!query_at(batch, i, &item)) {
            status = 0;
            break;
        }
        PyObject *fields = cached_parts(&by_clients, clients, item.client, client_fields, 3);
        if (fields == NULL || fields == Py_None) {
            status = fields == NULL ? -1 : 0;
            break;
        }
        PyObject *query_start = PyList_GET_ITEM(fields, 1), *response_start = PyList_GET_ITEM(fields, 2);
        double answered = PyFloat_AS_DOUBLE(item.when);
        unsigned char times[2 * (1 + 10 + 5)];
        int started_length = add_time(times, answered - PyFloat_AS_DOUBLE(item.latency), 8 << 3, 9 << 3 | 5);
        int answered_length = add_time(times + started_length, answered, 12 << 3, 13 << 3 | 5);
        int added = 0;
        if (PyBytes_Check(query_start) && PyBytes_Check(response_start) && started_length && answered_length)
            added = add_frame(&buffer, envelope_data, envelope_length, query_start, times, started_length,
                              10 << 3 | 2, item.query);
        if (added == 1 && item.response != Py_None)
            added = add_frame(&buffer, envelope_data, envelope_length, response_start, times,
                              started_length + answered_length, 14 << 3 | 2, item.response);
        if (added != 1) {
            status = added;
            break;
        }
    }
    cache_clear(&by_clients);
    return made(status, buffer.length);
}

static PyMethodDef methods[] = {
    {"native", lines_native, METH_VARARGS, "Native query log lines of a batch of the serving thread's tuples."},
    {"dnstap", lines_dnstap, METH_VARARGS, "dnstap CLIENT_QUERY/CLIENT_RESPONSE frames of such a batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lines", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lines(void) { return PyModule_Create(&module); }
