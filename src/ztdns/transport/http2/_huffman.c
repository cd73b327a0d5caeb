/* HPACK Huffman decoding (RFC 7541 section 5.2) for the HTTP/2 core (http2/huffman.py): the same byte-at-a-time
 * walk through flat tables as the Python decoder there, which builds the tables and hands them over once with
 * load(). A DoH GET's :path (the query, base64url) is Huffman-coded by nghttp2-based clients, so every GET request
 * decodes some 50 bytes: about 2.5 us in Python, 0.1 us here. Optional: huffman.py falls back to Python without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define EOS_NODE 0xFFFF /* a byte that decodes the EOS symbol: an error */

static uint16_t *next_node = NULL;   /* [node << 8 | byte] -> node after the byte, or EOS_NODE */
static uint8_t *decoded_count = NULL; /* [node << 8 | byte] -> symbols the byte completes (0 to 2) */
static uint8_t *decoded = NULL;       /* [(node << 8 | byte) * 2 + k] -> those symbols */
static uint8_t *padding_ok = NULL;    /* [node] -> stopping here is valid padding */
static Py_ssize_t node_count = 0;

static int copy_table(PyObject *source, void **target, Py_ssize_t size) {
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0) return -1;
    if (view.len != size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "table of the wrong size");
        return -1;
    }
    void *copy = PyMem_Malloc(size > 0 ? size : 1);
    if (copy == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, view.buf, size);
    PyBuffer_Release(&view);
    PyMem_Free(*target);
    *target = copy;
    return 0;
}

/* load(nodes, next, count, symbols, padding): next as native uint16 (EOS_NODE for EOS), count and padding as bytes,
 * symbols two bytes per entry. */
static PyObject *load(PyObject *self, PyObject *args) {
    Py_ssize_t nodes;
    PyObject *next, *count, *symbols, *padding;
    if (!PyArg_ParseTuple(args, "nOOOO", &nodes, &next, &count, &symbols, &padding)) return NULL;
    if (nodes <= 0 || nodes >= EOS_NODE) {
        PyErr_SetString(PyExc_ValueError, "bad node count");
        return NULL;
    }
    node_count = 0;
    if (copy_table(next, (void **)&next_node, nodes * 256 * 2) < 0 ||
        copy_table(count, (void **)&decoded_count, nodes * 256) < 0 ||
        copy_table(symbols, (void **)&decoded, nodes * 256 * 2) < 0 ||
        copy_table(padding, (void **)&padding_ok, nodes) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < nodes * 256; i++) {
        if (decoded_count[i] > 2 || (next_node[i] != EOS_NODE && next_node[i] >= nodes)) {
            PyErr_SetString(PyExc_ValueError, "table entry out of range");
            return NULL;
        }
    }
    node_count = nodes;
    Py_RETURN_NONE;
}

/* decode(data) -> bytes, or 1 when a byte decodes EOS, 2 when the padding is not a prefix of EOS. */
static PyObject *decode(PyObject *self, PyObject *arg) {
    if (node_count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "tables not loaded");
        return NULL;
    }
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *data = in.buf;
    PyObject *out = PyBytes_FromStringAndSize(NULL, in.len * 2 + 2);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t n = 0;
    unsigned state = 0;
    for (Py_ssize_t i = 0; i < in.len; i++) {
        unsigned index = state << 8 | data[i];
        unsigned after = next_node[index];
        if (after == EOS_NODE) {
            PyBuffer_Release(&in);
            Py_DECREF(out);
            return PyLong_FromLong(1);
        }
        o[n] = decoded[index * 2];
        o[n + 1] = decoded[index * 2 + 1];
        n += decoded_count[index];
        state = after;
    }
    PyBuffer_Release(&in);
    if (!padding_ok[state]) {
        Py_DECREF(out);
        return PyLong_FromLong(2);
    }
    if (_PyBytes_Resize(&out, n) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"load", load, METH_VARARGS, "Take the decoding tables (from huffman.py)."},
    {"decode", decode, METH_O, "Decode an HPACK Huffman string: bytes, or 1 (EOS) or 2 (bad padding)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_huffman", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__huffman(void) { return PyModule_Create(&module); }
