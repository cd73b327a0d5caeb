/* The query records of the sinks, in C: the ring the serving threads write each answer's record into (Records:
 * the few numbers a record needs and the bytes received and sent, copied into memory kept from batch to batch,
 * with the client and answer objects as indexes into one list per batch), and the records of the two sinks that
 * read them, a whole batch per call: native query log lines (observe/formats.py, NativeLines.data: the same bytes as
 * NativeLines.text(items).encode()) and dnstap frames (observe/dnstap.py, DnstapSink.frames: the same bytes as
 * DnstapSink.raw_frames(items)).
 *
 * A batch is either a chunk taken from the ring (count, records, wires, objects, parts: observe/ring.py's Chunk) or a
 * list of the serving thread's tuples (the pure-Python ring's, and single events a sink is handed). Python makes what is
 * the same for every query of one client and of one answer (memos of parts keyed by the objects' ids, filled by
 * Python callbacks on a miss) and the log's time stamp of each second; this looks them up, formats the per-query
 * numbers (latency, query ID, response size; dnstap's times and lengths) and copies the pieces into the caller's
 * bytearray, which is kept from batch to batch: no Python object is made per query, and the output's memory is
 * not allocated (and faulted in by the kernel) anew for every batch. Each function returns the number of bytes
 * made, or None when a piece is not what it expects (a part that is not ASCII text, which json.dumps never makes;
 * a time that is not a positive float; another event among the queries): then the caller uses the Python path.
 * Built optionally, like _udpbatch; tests/observe/test_sink_fast_paths.py and test_lines_extension.py hold both
 * paths to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
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

/* The parts of the batch's object `index` (`object`): from the chunk's list of parts (made and kept there on the
 * first record naming it), or, in a list of tuples (index -1), through the cache. Borrowed, NULL on error, Py_None
 * when what make returned does not have the shape. */
static PyObject *parts_for(PyObject *parts, Cache *cache, Py_ssize_t index, PyObject *object, PyObject *memo,
                           PyObject *make, Py_ssize_t size) {
    if (parts == NULL || index < 0) return cached_parts(cache, memo, object, make, size);
    PyObject *known = PyList_GET_ITEM(parts, index);
    if (known != Py_None) return known;
    PyObject *made_parts = parts_of(memo, object, make, size);
    if (made_parts == NULL || made_parts == Py_None) {
        Py_XDECREF(made_parts);
        return made_parts == NULL ? NULL : Py_None;
    }
    if (index >= PyList_GET_SIZE(parts)) { /* make changed the list: not ours to fill */
        Py_DECREF(made_parts);
        return Py_None;
    }
    PyList_SetItem(parts, index, made_parts); /* the list holds it now */
    return made_parts;
}

/* One record of the ring (Records.take's `records` block is an array of these): when the answer was sent
 * (time.time()) and its latency (seconds), who asked and what was said (indexes into the chunk's objects; with
 * `answer` ANOTHER_EVENT, `client` is another event: a security or upstream event, kept in order), the bytes
 * received (at `offset` in the chunk's wires) and sent (after them; -1: dropped, no answer). observe/ring.py's
 * RECORD is the same layout. */
typedef struct {
    double when;
    double latency;
    uint32_t client;
    uint32_t answer;
    uint32_t offset;
    int32_t query_length;
    int32_t response_length;
} Record;
#define ANOTHER_EVENT UINT32_MAX

/* One query of a batch, borrowed: its objects (and, in a chunk, their indexes; -1 in a list), numbers, and the
 * bytes received and sent (response NULL: dropped). */
typedef struct {
    double when, latency;
    PyObject *client, *answer;
    Py_ssize_t client_index, answer_index;
    const char *query, *response;
    Py_ssize_t query_length, response_length;
} Query;

/* Block: memory the ring filled, handed over at a take as it is (no copy): the records or the bytes received and
 * sent of one chunk, read only, through the buffer protocol. When the last sink is done with the chunk, the memory
 * goes back to a small pool the ring refills from (still mapped and faulted in: the serving thread writes the
 * next chunk into it without page faults), or is freed when the pool is full or the block is large. Blocks are made
 * and released with the GIL held, as the pool is used. */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t length, capacity;
    int pool;
} Block;

#define RECORDS_POOL 0
#define WIRES_POOL 1
#define POOL_BLOCKS 8
/* Memory kept in each pool at most (a burst's memory is given back once it is over). */
#define POOL_BYTES ((Py_ssize_t)1 << 25)
static struct {
    char *data;
    Py_ssize_t capacity;
} pool[2][POOL_BLOCKS];
static int pooled[2];
static Py_ssize_t pooled_bytes[2];

static void block_dealloc(Block *self) {
    int kind = self->pool;
    if (self->data != NULL && pooled[kind] < POOL_BLOCKS && pooled_bytes[kind] + self->capacity <= POOL_BYTES) {
        pool[kind][pooled[kind]].data = self->data;
        pool[kind][pooled[kind]].capacity = self->capacity;
        pooled[kind]++;
        pooled_bytes[kind] += self->capacity;
    } else {
        PyMem_RawFree(self->data);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_getbuffer(Block *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data != NULL ? self->data : (char *)"", self->length, 1,
                             flags);
}

static Py_ssize_t block_length(Block *self) { return self->length; }

static PyBufferProcs block_as_buffer = {.bf_getbuffer = (getbufferproc)block_getbuffer};
static PySequenceMethods block_sequence = {.sq_length = (lenfunc)block_length};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ztdns.observe._lines.Block",
    .tp_basicsize = sizeof(Block),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory of the ring's records or messages, handed over at a take (read only: the buffer protocol).",
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_as_sequence = &block_sequence,
};

/* Memory for the ring's next chunk, of at least `wanted` bytes (twice the last chunk's: one a little larger does not
 * make the serving thread grow it, a copy), its size in *capacity: from the pool `kind` (mapped and faulted in
 * already), else new (the pool is empty while sinks hold their chunks, or holds smaller blocks than today's load
 * needs: the smallest is let go); NULL and 0 when memory is out (the ring allocates when it adds). */
static char *pool_get(int kind, Py_ssize_t wanted, Py_ssize_t *capacity) {
    int smallest = -1;
    for (int i = 0; i < pooled[kind]; i++) {
        if (pool[kind][i].capacity >= wanted) {
            char *data = pool[kind][i].data;
            *capacity = pool[kind][i].capacity;
            pooled_bytes[kind] -= *capacity;
            pool[kind][i] = pool[kind][--pooled[kind]];
            return data;
        }
        if (smallest < 0 || pool[kind][i].capacity < pool[kind][smallest].capacity) smallest = i;
    }
    if (smallest >= 0) {
        PyMem_RawFree(pool[kind][smallest].data);
        pooled_bytes[kind] -= pool[kind][smallest].capacity;
        pool[kind][smallest] = pool[kind][--pooled[kind]];
    }
    char *made = PyMem_RawMalloc((size_t)wanted);
    *capacity = made != NULL ? wanted : 0;
    return made;
}

/* 1: `object` is bytes or a Block (then *data and *length are its bytes); 0: neither. */
static int bytes_of(PyObject *object, const char **data, Py_ssize_t *length) {
    if (PyBytes_Check(object)) {
        *data = PyBytes_AS_STRING(object);
        *length = PyBytes_GET_SIZE(object);
        return 1;
    }
    if (Py_IS_TYPE(object, &BlockType)) {
        Block *block = (Block *)object;
        *data = block->data != NULL ? block->data : ""; /* no memory yet, nothing added: a response may be empty */
        *length = block->length;
        return 1;
    }
    return 0;
}

/* A batch: a list of (time, client, answer, latency, query bytes, response bytes | None) tuples, or a chunk of the
 * ring, (count, records, wires, objects list, parts list): the first `count` records of the records block (bytes or
 * a Block), the bytes received and sent (likewise); `parts` holds the parts made for each object of the chunk (None
 * until made), kept by the caller from one call to the next over the chunk, so that each object's parts are looked
 * up once per chunk, not once per record. */
typedef struct {
    PyObject *list;
    const Record *records;
    Py_ssize_t count;
    const char *wires;
    Py_ssize_t wires_length;
    PyObject *objects;
    PyObject *parts;
} Source;

/* 1: `batch` is one of the two (then `source` reads it); 0: neither. */
static int source_open(PyObject *batch, Source *source) {
    memset(source, 0, sizeof *source);
    if (PyList_Check(batch)) {
        source->list = batch;
        source->count = PyList_GET_SIZE(batch);
        return 1;
    }
    if (!PyTuple_Check(batch) || PyTuple_GET_SIZE(batch) != 5) return 0;
    PyObject *count = PyTuple_GET_ITEM(batch, 0), *objects = PyTuple_GET_ITEM(batch, 3);
    PyObject *parts = PyTuple_GET_ITEM(batch, 4);
    const char *records;
    Py_ssize_t records_length;
    if (!PyLong_Check(count) || !bytes_of(PyTuple_GET_ITEM(batch, 1), &records, &records_length) ||
        !bytes_of(PyTuple_GET_ITEM(batch, 2), &source->wires, &source->wires_length) || !PyList_Check(objects) ||
        !PyList_Check(parts) || PyList_GET_SIZE(parts) != PyList_GET_SIZE(objects))
        return 0;
    Py_ssize_t counted = PyLong_AsSsize_t(count);
    if (counted < 0) {
        PyErr_Clear();
        return 0;
    }
    source->parts = parts;
    source->records = (const Record *)records;
    source->count = records_length / (Py_ssize_t)sizeof(Record);
    if (counted < source->count) source->count = counted;
    source->objects = objects;
    return 1;
}

/* 1: the batch's item `index` is a query (then `query` holds its members); 0: it is not (another event, or not
 * of the shape). */
static int query_at(const Source *source, Py_ssize_t index, Query *query) {
    if (source->records != NULL) {
        const Record *record = &source->records[index];
        Py_ssize_t objects = PyList_GET_SIZE(source->objects);
        if (record->answer == ANOTHER_EVENT || record->client >= objects || record->answer >= objects) return 0;
        Py_ssize_t end = (Py_ssize_t)record->offset + record->query_length;
        if (record->query_length < 0 || (record->response_length > 0 ? end + record->response_length : end) >
                                            source->wires_length)
            return 0;
        query->when = record->when;
        query->latency = record->latency;
        query->client = PyList_GET_ITEM(source->objects, record->client);
        query->answer = PyList_GET_ITEM(source->objects, record->answer);
        query->client_index = record->client;
        query->answer_index = record->answer;
        query->query = source->wires + record->offset;
        query->query_length = record->query_length;
        query->response = record->response_length < 0 ? NULL : source->wires + end;
        query->response_length = record->response_length < 0 ? 0 : record->response_length;
        return 1;
    }
    PyObject *item = PyList_GET_ITEM(source->list, index);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) return 0;
    PyObject *when = PyTuple_GET_ITEM(item, 0), *latency = PyTuple_GET_ITEM(item, 3);
    PyObject *sent = PyTuple_GET_ITEM(item, 4), *response = PyTuple_GET_ITEM(item, 5);
    if (!PyFloat_Check(when) || !PyFloat_Check(latency) || !PyBytes_Check(sent)) return 0;
    if (response != Py_None && !PyBytes_Check(response)) return 0;
    query->when = PyFloat_AS_DOUBLE(when);
    query->latency = PyFloat_AS_DOUBLE(latency);
    query->client = PyTuple_GET_ITEM(item, 1);
    query->answer = PyTuple_GET_ITEM(item, 2);
    query->client_index = query->answer_index = -1;
    query->query = PyBytes_AS_STRING(sent);
    query->query_length = PyBytes_GET_SIZE(sent);
    query->response = response == Py_None ? NULL : PyBytes_AS_STRING(response);
    query->response_length = response == Py_None ? 0 : PyBytes_GET_SIZE(response);
    return 1;
}

/* The tuples of a list were made by the serving thread up to a feed's interval ago, and are rarely still in the
 * CPU's cache: ask for the tuple `AHEAD` items on and for the members of the one half as far on, so that their
 * loads overlap with the work on this one instead of each waiting in turn. (A chunk is read in order from one
 * block: the CPU's own prefetching does it.) */
#define AHEAD 8
static inline void prefetch(const Source *source, Py_ssize_t index, Py_ssize_t count) {
    PyObject *batch = source->list;
    if (batch == NULL) return;
    if (index + AHEAD < count) __builtin_prefetch(PyList_GET_ITEM(batch, index + AHEAD));
    if (index + AHEAD / 2 < count) {
        PyObject *item = PyList_GET_ITEM(batch, index + AHEAD / 2);
        if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 6)
            for (int member = 0; member < 6; member++) __builtin_prefetch(PyTuple_GET_ITEM(item, member));
    }
}

/* The end of the items from *start to stop that the batch has (*start raised to 0 if below). */
static Py_ssize_t clamp(const Source *source, Py_ssize_t *start, Py_ssize_t stop) {
    Py_ssize_t size = source->count;
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
 * batch: a chunk of the ring or a list of tuples (Source), of which the items from start to stop are made (the
 * caller does not slice: a slice of a list would take and drop a reference to each tuple);
 * clients: {id(client): [client, head, between]}, client_parts(client) -> such a list (and remembers it);
 * answers: {id(answer): [answer, members, tail]}, answer_parts(answer) likewise;
 * second_of(second) -> the line's start up to the time stamp's milliseconds, for that second (since the epoch);
 * out: a bytearray the lines are written to from its start (grown when too small). */
static PyObject *lines_native(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *batch, *clients, *answers, *client_parts, *answer_parts, *second_of, *out;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OnnO!O!OOOO!", &batch, &start, &stop, &PyDict_Type, &clients, &PyDict_Type,
                          &answers, &client_parts, &answer_parts, &second_of, &PyByteArray_Type, &out))
        return NULL;
    Source source;
    if (!source_open(batch, &source)) return Py_NewRef(Py_None);
    Buffer buffer;
    buffer_open(&buffer, out);
    Cache by_clients = {{NULL}, {NULL}}, by_answers = {{NULL}, {NULL}};
    PyObject *stamp = NULL; /* second_of's, for stamp_second */
    long long stamp_second = -1;
    int status = 1;
    Py_ssize_t count = clamp(&source, &start, stop);
    if (buffer_room(&buffer, (count - start) * 640 + 64) < 0) return NULL;
    for (Py_ssize_t i = start; i < count; i++) {
        Query item;
        prefetch(&source, i, count);
        if (!query_at(&source, i, &item)) {
            status = 0;
            break;
        }
        PyObject *by_client = parts_for(source.parts, &by_clients, item.client_index, item.client, clients,
                                        client_parts, 3);
        PyObject *by_answer = by_client == NULL || by_client == Py_None
                                  ? by_client
                                  : parts_for(source.parts, &by_answers, item.answer_index, item.answer, answers,
                                              answer_parts, 3);
        if (by_answer == NULL || by_answer == Py_None) {
            status = by_answer == NULL ? -1 : 0;
            break;
        }
        double seconds = item.when;
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
        if (added == 1) added = add_milliseconds(&buffer, item.latency * 1000.0) < 0 ? -1 : 1;
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_client, 2));
        if (added == 1) {
            char numbers[64];
            int length;
            if (item.query_length >= 2) {
                const unsigned char *id = (const unsigned char *)item.query;
                length = decimal(numbers, (unsigned)(id[0] << 8 | id[1]));
            } else {
                memcpy(numbers, "null", 4);
                length = 4;
            }
            static const char size_name[] = ", \"response_size\": ";
            memcpy(numbers + length, size_name, sizeof size_name - 1);
            length += (int)sizeof size_name - 1;
            length += decimal(numbers + length, (unsigned long long)item.response_length);
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
                     const unsigned char *times, int times_length, unsigned char tag, const char *wire,
                     Py_ssize_t wire_length) {
    unsigned char head[11], length_field[10], frame_length[4];
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
    memcpy(at, wire, (size_t)wire_length);
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
    if (!PyArg_ParseTuple(args, "OnnO!OO!O!", &batch, &start, &stop, &PyDict_Type, &clients, &client_fields,
                          &PyBytes_Type, &envelope, &PyByteArray_Type, &out))
        return NULL;
    Source source;
    if (!source_open(batch, &source)) return Py_NewRef(Py_None);
    Buffer buffer;
    buffer_open(&buffer, out);
    Cache by_clients = {{NULL}, {NULL}};
    int status = 1;
    const char *envelope_data = PyBytes_AS_STRING(envelope);
    Py_ssize_t envelope_length = PyBytes_GET_SIZE(envelope);
    Py_ssize_t count = clamp(&source, &start, stop);
    for (Py_ssize_t i = start; i < count; i++) {
        Query item;
        prefetch(&source, i, count);
        if (!query_at(&source, i, &item)) {
            status = 0;
            break;
        }
        PyObject *fields = parts_for(source.parts, &by_clients, item.client_index, item.client, clients,
                                     client_fields, 3);
        if (fields == NULL || fields == Py_None) {
            status = fields == NULL ? -1 : 0;
            break;
        }
        PyObject *query_start = PyList_GET_ITEM(fields, 1), *response_start = PyList_GET_ITEM(fields, 2);
        double answered = item.when;
        unsigned char times[2 * (1 + 10 + 5)];
        int started_length = add_time(times, answered - item.latency, 8 << 3, 9 << 3 | 5);
        int answered_length = add_time(times + started_length, answered, 12 << 3, 13 << 3 | 5);
        int added = 0;
        if (PyBytes_Check(query_start) && PyBytes_Check(response_start) && started_length && answered_length)
            added = add_frame(&buffer, envelope_data, envelope_length, query_start, times, started_length,
                              10 << 3 | 2, item.query, item.query_length);
        if (added == 1 && item.response != NULL)
            added = add_frame(&buffer, envelope_data, envelope_length, response_start, times,
                              started_length + answered_length, 14 << 3 | 2, item.response, item.response_length);
        if (added != 1) {
            status = added;
            break;
        }
    }
    cache_clear(&by_clients);
    return made(status, buffer.length);
}

/* Records(capacity): the ring between the serving threads and the feed's thread (observe/ring.py). The serving
 * threads add one record per answer (the numbers and the bytes received and sent copied into two blocks of memory
 * kept from batch to batch, the client and the answer as indexes into one list of the batch's objects, each
 * object listed once per batch, found again through a table of RING_SLOTS by its address); the feed's
 * thread takes what was added as a chunk: (count, records, wires, objects list), the two blocks of memory handed
 * over as they are (Blocks: no copy), and the ring starts over in memory from the pool. Beyond `capacity` records between takes, records are dropped and counted
 * (`dropped`). Every method runs with the GIL held and makes no Python call in between: adds and takes of
 * different threads never interleave. */
/* The table of the objects a batch names: open addressing, at most RING_PROBES slots looked at. A batch names a
 * few thousand objects at most (the answers of 20 ms of queries): the table stays sparse. When the probes find
 * neither the object nor a free slot, the last slot is taken over: the object evicted is listed again if named
 * again, which costs a list entry, never a wrong index. */
#define RING_SLOTS 8192
#define RING_PROBES 8
static inline Py_ssize_t ring_slot(PyObject *object) {
    return (Py_ssize_t)(((uint64_t)(uintptr_t)object * 0x9E3779B97F4A7C15u) >> 51); /* Fibonacci hashing: 13 bits */
}

typedef struct {
    PyObject_HEAD
    Record *records;
    Py_ssize_t count, room, capacity;
    char *wires;
    Py_ssize_t wires_length, wires_room;
    PyObject *objects;
    PyObject *keys[RING_SLOTS]; /* borrowed: listed in `objects` */
    uint32_t indexes[RING_SLOTS];
    Py_ssize_t dropped;
} Records;

static int records_init(Records *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", names, &capacity)) return -1;
    if (capacity < 1 || capacity > (Py_ssize_t)(UINT32_MAX / 2)) {
        PyErr_SetString(PyExc_ValueError, "capacity out of range");
        return -1;
    }
    if (self->objects == NULL && (self->objects = PyList_New(0)) == NULL) return -1;
    self->capacity = capacity;
    return 0;
}

static void records_dealloc(Records *self) {
    PyMem_RawFree(self->records);
    PyMem_RawFree(self->wires);
    Py_XDECREF(self->objects);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The index of `object` in the batch's list (listed now if it is not among the last ones); -1 on error. */
static Py_ssize_t records_index(Records *self, PyObject *object) {
    Py_ssize_t slot = ring_slot(object);
    for (int probe = 1; self->keys[slot] != NULL; probe++) {
        if (self->keys[slot] == object) return self->indexes[slot];
        if (probe == RING_PROBES) break;
        slot = (slot + 1) & (RING_SLOTS - 1);
    }
    Py_ssize_t index = PyList_GET_SIZE(self->objects);
    if (PyList_Append(self->objects, object) < 0) return -1;
    self->keys[slot] = object;
    self->indexes[slot] = (uint32_t)index;
    return index;
}

/* The bytes received and sent a batch holds at most: beyond, records are dropped (and counted) rather than the
 * memory grown further (answers over TCP can be 64 KB each). */
#define WIRES_LIMIT ((Py_ssize_t)1 << 28)

/* Room for one more record and `wire` more bytes; -1 with an exception when memory is out. */
static int records_room(Records *self, Py_ssize_t wire) {
    if (self->count == self->room) {
        Py_ssize_t room = self->room ? self->room * 2 : 1024;
        Record *grown = PyMem_RawRealloc(self->records, (size_t)room * sizeof(Record));
        if (grown == NULL) goto nomemory;
        self->records = grown;
        self->room = room;
    }
    if (self->wires_length + wire > self->wires_room) {
        Py_ssize_t room = self->wires_room ? self->wires_room * 2 : 65536;
        if (room < self->wires_length + wire) room = self->wires_length + wire;
        char *grown = PyMem_RawRealloc(self->wires, (size_t)room);
        if (grown == NULL) goto nomemory;
        self->wires = grown;
        self->wires_room = room;
    }
    return 0;
nomemory:
    PyErr_NoMemory();
    return -1;
}

/* The bytes of a message: bytes as they are, anything else through the buffer protocol (released by the caller
 * when `view->obj` is set). 1: got them; 0: not bytes-like (no exception left). */
static int message_bytes(PyObject *message, Py_buffer *view, const char **data, Py_ssize_t *length) {
    view->obj = NULL;
    if (PyBytes_Check(message)) {
        *data = PyBytes_AS_STRING(message);
        *length = PyBytes_GET_SIZE(message);
        return 1;
    }
    if (PyObject_GetBuffer(message, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        view->obj = NULL;
        return 0;
    }
    *data = view->buf;
    *length = view->len;
    return 1;
}

/* Add one query's record from the bytes received and sent (response_length -1: none): 1 added, 0 dropped and
 * counted (the ring is full), -1 error (out of memory). Also what _udpbatch.serve adds through the capsule
 * `add_record` (below), straight from its receive and send buffers. */
static int records_add_raw(Records *self, double when, double latency, PyObject *client, PyObject *answer,
                           const char *query_data, Py_ssize_t query_length, const char *response_data,
                           Py_ssize_t response_length) {
    Py_ssize_t wire = query_length + (response_length < 0 ? 0 : response_length);
    if (self->count >= self->capacity || self->wires_length + wire > WIRES_LIMIT) {
        self->dropped++;
        return 0;
    }
    if (records_room(self, wire) < 0) return -1;
    Py_ssize_t client_index = records_index(self, client);
    Py_ssize_t answer_index = client_index < 0 ? -1 : records_index(self, answer);
    if (answer_index < 0) return -1;
    Record *record = &self->records[self->count++];
    memset(record, 0, sizeof *record); /* the padding too: a chunk's bytes are the same for the same records */
    record->when = when;
    record->latency = latency;
    record->client = (uint32_t)client_index;
    record->answer = (uint32_t)answer_index;
    record->offset = (uint32_t)self->wires_length;
    record->query_length = (int32_t)query_length;
    record->response_length = (int32_t)response_length;
    memcpy(self->wires + self->wires_length, query_data, (size_t)query_length);
    if (response_length > 0)
        memcpy(self->wires + self->wires_length + query_length, response_data, (size_t)response_length);
    self->wires_length += wire;
    return 1;
}

/* Add one query's record: 1 added, 0 dropped and counted (the ring is full, or a message is not bytes-like: a
 * record is never worth failing an answer for), -1 error (out of memory). */
static int records_add_one(Records *self, double when, double latency, PyObject *client, PyObject *answer,
                           PyObject *query, PyObject *response) {
    Py_buffer query_view, response_view;
    const char *query_data, *response_data = NULL;
    Py_ssize_t query_length, response_length = -1;
    int status = 0;
    response_view.obj = NULL;
    if (!message_bytes(query, &query_view, &query_data, &query_length)) goto drop;
    if (response != Py_None && !message_bytes(response, &response_view, &response_data, &response_length)) goto drop;
    status = records_add_raw(self, when, latency, client, answer, query_data, query_length, response_data,
                             response_length);
    goto done;
drop:
    self->dropped++;
done:
    if (query_view.obj != NULL) PyBuffer_Release(&query_view);
    if (response_view.obj != NULL) PyBuffer_Release(&response_view);
    return status;
}

/* add(when, latency, client, answer, query, response) -> bool: False when the ring is full (counted). */
static PyObject *records_add(Records *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "add(when, latency, client, answer, query, response)");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]), latency = PyFloat_AsDouble(args[1]);
    if ((when == -1.0 || latency == -1.0) && PyErr_Occurred()) return NULL;
    int added = records_add_one(self, when, latency, args[2], args[3], args[4], args[5]);
    if (added < 0) return NULL;
    return Py_NewRef(added ? Py_True : Py_False);
}

/* add_replies(when, latency, client, replies) -> int: add(when, latency, client, answer, query, response) for each
 * (answer, query, response, ...) of the list `replies` (one client's replays of a UDP lane's batch); the number
 * added (the rest was dropped and counted). */
static PyObject *records_add_replies(Records *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "add_replies(when, latency, client, replies: list)");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]), latency = PyFloat_AsDouble(args[1]);
    if ((when == -1.0 || latency == -1.0) && PyErr_Occurred()) return NULL;
    PyObject *replies = args[3];
    Py_ssize_t added = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(replies); i++) {
        PyObject *reply = PyList_GET_ITEM(replies, i);
        if (!PyTuple_Check(reply) || PyTuple_GET_SIZE(reply) < 3) {
            PyErr_SetString(PyExc_TypeError, "a reply is (answer, query, response, ...)");
            return NULL;
        }
        int one = records_add_one(self, when, latency, args[2], PyTuple_GET_ITEM(reply, 0), PyTuple_GET_ITEM(reply, 1),
                                  PyTuple_GET_ITEM(reply, 2));
        if (one < 0) return NULL;
        added += one;
    }
    return PyLong_FromSsize_t(added);
}

/* add_event(event) -> bool: another event (security, upstream) in order among the queries. */
static PyObject *records_add_event(Records *self, PyObject *event) {
    if (self->count >= self->capacity) {
        self->dropped++;
        Py_RETURN_FALSE;
    }
    if (records_room(self, 0) < 0) return NULL;
    Py_ssize_t index = PyList_GET_SIZE(self->objects);
    if (PyList_Append(self->objects, event) < 0) return NULL;
    Record *record = &self->records[self->count++];
    memset(record, 0, sizeof *record);
    record->client = (uint32_t)index;
    record->answer = ANOTHER_EVENT;
    Py_RETURN_TRUE;
}

/* A Block holding `data` (its memory now: NULL, 0 for none), `length` bytes of `capacity` used; NULL on error (the
 * memory is then not the Block's). */
static PyObject *block_of(char *data, Py_ssize_t length, Py_ssize_t capacity, int kind) {
    Block *block = PyObject_New(Block, &BlockType);
    if (block == NULL) return NULL;
    block->data = data;
    block->length = length;
    block->capacity = capacity;
    block->pool = kind;
    return (PyObject *)block;
}

/* take() -> (count, records, wires, objects) | None: what was added since the last take (None: nothing), the
 * records and the bytes received and sent as Blocks: the ring's memory itself, handed over; the ring goes on in
 * memory from the pool (or new). */
static PyObject *records_take(Records *self, PyObject *unused) {
    (void)unused;
    if (self->count == 0) Py_RETURN_NONE;
    /* Made before anything is handed over: an allocation may run the collector, which may run code that adds. */
    PyObject *fresh = PyList_New(0);
    PyObject *count = fresh == NULL ? NULL : PyLong_FromSsize_t(self->count);
    PyObject *records = count == NULL ? NULL : block_of(NULL, 0, 0, RECORDS_POOL);
    PyObject *wires = records == NULL ? NULL : block_of(NULL, 0, 0, WIRES_POOL);
    PyObject *taken = wires == NULL ? NULL : PyTuple_Pack(4, count, records, wires, self->objects);
    Py_XDECREF(count);
    Py_XDECREF(records);
    Py_XDECREF(wires);
    if (taken == NULL) {
        Py_XDECREF(fresh);
        return NULL;
    }
    Block *records_block = (Block *)records, *wires_block = (Block *)wires; /* held by `taken` */
    records_block->data = (char *)self->records;
    records_block->length = self->count * (Py_ssize_t)sizeof(Record);
    records_block->capacity = self->room * (Py_ssize_t)sizeof(Record);
    wires_block->data = self->wires;
    wires_block->length = self->wires_length;
    wires_block->capacity = self->wires_room;
    Py_ssize_t capacity;
    self->records = (Record *)pool_get(RECORDS_POOL, 2 * records_block->length, &capacity);
    self->room = capacity / (Py_ssize_t)sizeof(Record);
    self->wires = pool_get(WIRES_POOL, 2 * wires_block->length + 65536, &capacity);
    self->wires_room = capacity;
    Py_SETREF(self->objects, fresh);
    self->count = 0;
    self->wires_length = 0;
    memset(self->keys, 0, sizeof self->keys);
    return taken;
}

static Py_ssize_t records_length(Records *self) { return self->count; }

static PyMethodDef records_methods[] = {
    {"add", (PyCFunction)(void (*)(void))records_add, METH_FASTCALL,
     "add(when, latency, client, answer, query, response) -> bool"},
    {"add_replies", (PyCFunction)(void (*)(void))records_add_replies, METH_FASTCALL,
     "add_replies(when, latency, client, replies) -> number added"},
    {"add_event", (PyCFunction)records_add_event, METH_O, "add_event(event) -> bool"},
    {"take", (PyCFunction)records_take, METH_NOARGS, "take() -> (count, records, wires, objects) | None"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef records_members[] = {
    {"dropped", T_PYSSIZET, offsetof(Records, dropped), 0, "records dropped: the ring was full"},
    {"capacity", T_PYSSIZET, offsetof(Records, capacity), READONLY, "records held at most between takes"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods records_sequence = {.sq_length = (lenfunc)records_length};

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ztdns.observe._lines.Records",
    .tp_basicsize = sizeof(Records),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The ring of query records between the serving threads and the feed's thread.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)records_init,
    .tp_dealloc = (destructor)records_dealloc,
    .tp_methods = records_methods,
    .tp_members = records_members,
    .tp_as_sequence = &records_sequence,
};

/* reserve(fd, offset, length) -> bool: the file's disk blocks from `offset` on allocated ahead of the writes that
 * will fill them, its size unchanged (fallocate's FALLOC_FL_KEEP_SIZE: readers see no zeros). Appends then land in
 * blocks already allocated: the kernel skips the delayed allocation's per-page bookkeeping (reservation, quota,
 * extent status), about a fifth of a buffered write's CPU (observe/querylog.py). False when the file system or
 * platform cannot (the writes go on unreserved), or the disk is full. */
static PyObject *lines_reserve(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    long long offset, length;
    if (!PyArg_ParseTuple(args, "iLL", &fd, &offset, &length)) return NULL;
#ifdef FALLOC_FL_KEEP_SIZE
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
    Py_END_ALLOW_THREADS
    if (done == 0) Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"native", lines_native, METH_VARARGS, "Native query log lines of a batch (a chunk of the ring or tuples)."},
    {"dnstap", lines_dnstap, METH_VARARGS, "dnstap CLIENT_QUERY/CLIENT_RESPONSE frames of such a batch."},
    {"reserve", lines_reserve, METH_VARARGS, "Allocate a file's blocks ahead of its writes, its size unchanged."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lines", NULL, -1, methods, NULL, NULL, NULL, NULL};

/* records_add_raw for a ring given as an object (the capsule's function): -1 with TypeError when it is not one. */
static int records_add_record(PyObject *ring, double when, double latency, PyObject *client, PyObject *answer,
                              const char *query_data, Py_ssize_t query_length, const char *response_data,
                              Py_ssize_t response_length) {
    if (!PyObject_TypeCheck(ring, &RecordsType)) {
        PyErr_SetString(PyExc_TypeError, "the ring must be a _lines.Records");
        return -1;
    }
    return records_add_raw((Records *)ring, when, latency, client, answer, query_data, query_length, response_data,
                           response_length);
}

PyMODINIT_FUNC PyInit__lines(void) {
    if (PyType_Ready(&RecordsType) < 0 || PyType_Ready(&BlockType) < 0) return NULL;
    PyObject *made_module = PyModule_Create(&module);
    if (made_module == NULL) return NULL;
    if (PyModule_AddObjectRef(made_module, "Records", (PyObject *)&RecordsType) < 0 ||
        PyModule_AddIntConstant(made_module, "RECORD_SIZE", (long)sizeof(Record)) < 0) {
        Py_DECREF(made_module);
        return NULL;
    }
    /* records_add_record for _udpbatch.serve (C to C, no objects per record); the name says its signature. */
    PyObject *capsule = PyCapsule_New((void *)records_add_record, "ztdns.observe._lines.add_record", NULL);
    if (capsule == NULL || PyModule_AddObjectRef(made_module, "add_record", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(made_module);
        return NULL;
    }
    Py_DECREF(capsule);
    return made_module;
}
