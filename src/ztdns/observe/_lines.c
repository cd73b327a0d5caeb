/* Native query log lines in C, for the JSON sink's thread (observe/formats.py, NativeLines.data): the same bytes
 * as NativeLines.text(batch).encode(), made without a Python string per piece. Python makes what is the same for
 * every query of one client and of one answer (its memos of parts, NativeLines._client_parts and _answer_parts)
 * and the time stamp of each millisecond (NativeLines._stamp_of); this only looks them up, formats the latency, query ID and response size,
 * and copies the pieces into one buffer. It returns None when a piece is not ASCII text (json.dumps never makes
 * such a piece: then the caller uses the Python path). Built optionally, like _udpbatch; formats.py falls back to
 * the pure-Python path when it is absent, and tests/observe/test_sink_fast_paths.py holds the two to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdio.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
} Buffer;

static int buffer_add(Buffer *buffer, const char *text, Py_ssize_t length) {
    if (buffer->length + length > buffer->capacity) {
        Py_ssize_t capacity = buffer->capacity * 2;
        if (capacity < buffer->length + length) capacity = buffer->length + length;
        char *grown = PyMem_Realloc(buffer->data, (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        buffer->data = grown;
        buffer->capacity = capacity;
    }
    memcpy(buffer->data + buffer->length, text, (size_t)length);
    buffer->length += length;
    return 0;
}

/* 1: added; 0: not ASCII text (the caller gives up); -1: error. */
static int buffer_add_ascii(Buffer *buffer, PyObject *text) {
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) return 0;
    return buffer_add(buffer, (const char *)PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)) < 0 ? -1 : 1;
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
    if (!PyList_Check(parts) || PyList_GET_SIZE(parts) < size) {
        Py_DECREF(parts);
        return Py_NewRef(Py_None);
    }
    return parts;
}

/* native(batch, clients, answers, client_parts, answer_parts, stamp_of) -> bytes | None
 * batch: list of (time, client, answer, latency, query bytes, response bytes | None);
 * clients: {id(client): [client, head, between]}, client_parts(client) -> such a list (and remembers it);
 * answers: {id(answer): [answer, members, tail]}, answer_parts(answer) likewise;
 * stamp_of(time) -> the line's start up to the first member, for that millisecond. */
static PyObject *lines_native(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *batch, *clients, *answers, *client_parts, *answer_parts, *stamp_of;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO", &PyList_Type, &batch, &PyDict_Type, &clients, &PyDict_Type, &answers,
                          &client_parts, &answer_parts, &stamp_of))
        return NULL;
    Buffer buffer = {NULL, 0, 0};
    PyObject *stamp = NULL;
    long long stamp_milli = -1;
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(batch);
    buffer.capacity = count * 600 + 64;
    buffer.data = PyMem_Malloc((size_t)buffer.capacity);
    if (buffer.data == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) goto give_up;
        PyObject *when = PyTuple_GET_ITEM(item, 0), *client = PyTuple_GET_ITEM(item, 1);
        PyObject *answer = PyTuple_GET_ITEM(item, 2), *latency = PyTuple_GET_ITEM(item, 3);
        PyObject *query = PyTuple_GET_ITEM(item, 4), *response = PyTuple_GET_ITEM(item, 5);
        if (!PyFloat_Check(when) || !PyFloat_Check(latency) || !PyBytes_Check(query)) goto give_up;
        if (response != Py_None && !PyBytes_Check(response)) goto give_up;
        PyObject *by_client = parts_of(clients, client, client_parts, 3);
        if (by_client == NULL) goto error;
        PyObject *by_answer = by_client == Py_None ? Py_NewRef(Py_None) : parts_of(answers, answer, answer_parts, 3);
        if (by_answer == NULL) {
            Py_DECREF(by_client);
            goto error;
        }
        if (by_client == Py_None || by_answer == Py_None) {
            Py_DECREF(by_client);
            Py_DECREF(by_answer);
            goto give_up;
        }
        double seconds = PyFloat_AS_DOUBLE(when);
        long long milli = (long long)(seconds * 1000.0);
        char *latency_text = NULL;
        if (stamp == NULL || milli != stamp_milli) {
            Py_XDECREF(stamp);
            stamp = PyObject_CallOneArg(stamp_of, when);
            stamp_milli = milli;
        }
        if (stamp != NULL) latency_text = PyOS_double_to_string(PyFloat_AS_DOUBLE(latency) * 1000.0, 'f', 3, 0, NULL);
        if (latency_text == NULL) {
            Py_DECREF(by_client);
            Py_DECREF(by_answer);
            goto error;
        }
        char numbers[64];
        int numbers_length;
        if (PyBytes_GET_SIZE(query) >= 2) {
            const unsigned char *id = (const unsigned char *)PyBytes_AS_STRING(query);
            numbers_length = snprintf(numbers, sizeof numbers, "%u", (unsigned)(id[0] << 8 | id[1]));
        } else {
            numbers_length = snprintf(numbers, sizeof numbers, "null");
        }
        char size_text[48];
        int size_length = snprintf(size_text, sizeof size_text, ", \"response_size\": %zd",
                                   response == Py_None ? (Py_ssize_t)0 : PyBytes_GET_SIZE(response));
        int added = buffer_add_ascii(&buffer, stamp);
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_client, 1));
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_answer, 1));
        if (added == 1) added = buffer_add(&buffer, latency_text, (Py_ssize_t)strlen(latency_text)) < 0 ? -1 : 1;
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_client, 2));
        if (added == 1) added = buffer_add(&buffer, numbers, numbers_length) < 0 ? -1 : 1;
        if (added == 1) added = buffer_add(&buffer, size_text, size_length) < 0 ? -1 : 1;
        if (added == 1) added = buffer_add_ascii(&buffer, PyList_GET_ITEM(by_answer, 2));
        PyMem_Free(latency_text);
        Py_DECREF(by_client);
        Py_DECREF(by_answer);
        if (added < 0) goto error;
        if (added == 0) goto give_up;
    }
    result = PyBytes_FromStringAndSize(buffer.data, buffer.length);
    goto done;
give_up:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(stamp);
    PyMem_Free(buffer.data);
    return result;
}

static PyMethodDef methods[] = {
    {"native", lines_native, METH_VARARGS, "Native query log lines of a batch of the serving thread's tuples."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lines", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lines(void) { return PyModule_Create(&module); }
