/* A policy's name table as one flat buffer (issue 21): built by the child process that compiles a refresh
 * (policy/apart.py), written to a file both processes hold, and looked up in place by the serving process from
 * its mapping. Adopting a refresh is then a mapping and a swap, not millions of dict insertions.
 *
 * Layout (native byte order: both processes run on the same machine):
 *   header   u64 magic, u64 names, u64 mask (slots - 1, slots a power of two), u64 names_at (offset of the names),
 *            u64 key[2] (the hash's key)
 *   slots    per slot: u64 hash, u32 offset of the name in the names, u32 value (EMPTY: a free slot)
 *   names    per name: u16 length, then its UTF-8 bytes
 * Open addressing with linear probing, at most half the slots used. The hash is SipHash-1-3 (as CPython's str
 * hash) over the UTF-8 bytes, keyed by a random key drawn per table and kept in its header: the same in every
 * process that reads the table (str hashes are salted per process, so dict shards could not be handed over), and
 * unknown to whoever writes a list, so a feed cannot choose names that collide (hash flooding: long probe runs on
 * every look-up and a quadratic build).
 * A hash match is checked against the stored name, so collisions cost a probe, never a wrong answer.
 * Optional: without this module refreshes are compiled in the serving process into dicts (policy/compile.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#define MAGIC 0x32544e5354445a5aULL /* "ZZDTSNT2" */
#define EMPTY 0xFFFFFFFFu
#define HEADER_BYTES 48
#define SLOT_BYTES 16
#define MAX_NAME 0xFFFF

typedef struct {
    uint64_t magic, names, mask, names_at, key[2];
} Header;

typedef struct {
    uint64_t hash;
    uint32_t offset, value;
} Slot;

#define ROTATE(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                   \
    do {                                                                                                           \
        v0 += v1, v1 = ROTATE(v1, 13), v1 ^= v0, v0 = ROTATE(v0, 32);                                              \
        v2 += v3, v3 = ROTATE(v3, 16), v3 ^= v2;                                                                   \
        v0 += v3, v3 = ROTATE(v3, 21), v3 ^= v0;                                                                   \
        v2 += v1, v1 = ROTATE(v1, 17), v1 ^= v2, v2 = ROTATE(v2, 32);                                              \
    } while (0)

/* SipHash-1-3 of `length` bytes under `key` (one compression round, three finalisation rounds). */
static uint64_t siphash13(const uint64_t key[2], const char *bytes, Py_ssize_t length) {
    uint64_t v0 = key[0] ^ 0x736f6d6570736575ULL, v1 = key[1] ^ 0x646f72616e646f6dULL,
             v2 = key[0] ^ 0x6c7967656e657261ULL, v3 = key[1] ^ 0x7465646279746573ULL;
    const uint8_t *in = (const uint8_t *)bytes;
    Py_ssize_t whole = length - length % 8;
    for (Py_ssize_t i = 0; i < whole; i += 8) {
        uint64_t word = 0;
        for (int b = 7; b >= 0; b--) word = (word << 8) | in[i + b]; /* little-endian, whatever the machine */
        v3 ^= word;
        SIPROUND;
        v0 ^= word;
    }
    uint64_t last = (uint64_t)length << 56;
    for (Py_ssize_t b = length - 1; b >= whole; b--) last |= (uint64_t)in[b] << (8 * (b - whole));
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The UTF-8 bytes of a str key, or NULL with an error set (TypeError, or UnicodeEncodeError for lone surrogates).
 * ASCII strings (every normalised DNS name) are read in place. */
static const char *key_bytes(PyObject *name, Py_ssize_t *length) {
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "names are str, not %.100s", Py_TYPE(name)->tp_name);
        return NULL;
    }
    if (PyUnicode_IS_COMPACT_ASCII(name)) {
        *length = PyUnicode_GET_LENGTH(name);
        return (const char *)PyUnicode_DATA(name);
    }
    return PyUnicode_AsUTF8AndSize(name, length);
}

/* ---- building (in the child) ---- */

/* Insert a name, or find it: 1 when added (its bytes appended at names_end), 0 when already there (*found is its
 * slot; the value is left to the caller), -1 with an error set. */
static int insert(char *table, const char *bytes, Py_ssize_t length, uint32_t value, char *names_end,
                  uint64_t *count, Slot **found) {
    Header *header = (Header *)table;
    Slot *slots = (Slot *)(table + HEADER_BYTES);
    char *names = table + header->names_at;
    uint64_t hash = siphash13(header->key, bytes, length);
    for (uint64_t at = hash & header->mask;; at = (at + 1) & header->mask) {
        Slot *slot = &slots[at];
        if (slot->value == EMPTY) {
            uint64_t offset = (uint64_t)(names_end - names);
            if (offset > 0xFFFFFFFEu) {
                PyErr_SetString(PyExc_OverflowError, "the names of a table take more than 4 GiB");
                return -1;
            }
            uint16_t stored = (uint16_t)length;
            memcpy(names_end, &stored, 2);
            memcpy(names_end + 2, bytes, (size_t)length);
            slot->hash = hash;
            slot->offset = (uint32_t)offset;
            slot->value = value;
            (*count)++;
            return 1; /* the name's bytes were appended */
        }
        if (slot->hash == hash) {
            uint16_t stored;
            memcpy(&stored, names + slot->offset, 2);
            if (stored == length && memcmp(names + slot->offset + 2, bytes, (size_t)length) == 0) {
                *found = slot;
                return 0;
            }
        }
    }
}

static int check_value(PyObject *number, uint32_t *value) {
    unsigned long got = PyLong_AsUnsignedLong(number);
    if (got == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (got >= EMPTY) {
        PyErr_SetString(PyExc_OverflowError, "a value of 2**32 - 1 or more");
        return -1;
    }
    *value = (uint32_t)got;
    return 0;
}

/* build(groups, resolve) -> bytes: the table of the names of ``groups``, a sequence of (list of str, value), in
 * order. A name already in the table when a later group gives it again takes resolve(its value, the group's
 * value, the group's index) (policy/compile.py: the first alike list wins, others merge). */
static PyObject *build(PyObject *module, PyObject *args) {
    PyObject *groups, *resolve, *result = NULL;
    if (!PyArg_ParseTuple(args, "OO:build", &groups, &resolve)) return NULL;
    PyObject *sequence = PySequence_Fast(groups, "groups must be a sequence of (names, value)");
    if (sequence == NULL) return NULL;
    Py_ssize_t group_count = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    uint64_t total = 0, name_bytes = 0;
    for (Py_ssize_t i = 0; i < group_count; i++) {
        uint32_t value;
        if (!PyTuple_Check(items[i]) || PyTuple_GET_SIZE(items[i]) != 2 || !PyList_Check(PyTuple_GET_ITEM(items[i], 0))) {
            PyErr_SetString(PyExc_TypeError, "groups must be (list of str, int) tuples");
            goto fail;
        }
        if (check_value(PyTuple_GET_ITEM(items[i], 1), &value) < 0) goto fail;
        PyObject *names = PyTuple_GET_ITEM(items[i], 0);
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(names); j++) {
            Py_ssize_t length;
            if (key_bytes(PyList_GET_ITEM(names, j), &length) == NULL) goto fail;
            if (length > MAX_NAME) {
                PyErr_SetString(PyExc_ValueError, "a name longer than 65,535 bytes");
                goto fail;
            }
            total++;
            name_bytes += 2 + (uint64_t)length;
        }
    }
    uint64_t slots = 2;
    while (slots < 2 * total) slots *= 2;
    uint64_t names_at = HEADER_BYTES + slots * SLOT_BYTES;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(names_at + name_bytes));
    if (result == NULL) goto fail;
    char *table = PyBytes_AS_STRING(result);
    Header header = {MAGIC, 0, slots - 1, names_at, {0, 0}};
    if (getrandom(header.key, sizeof header.key, 0) != (ssize_t)sizeof header.key) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    memcpy(table, &header, sizeof header);
    Slot *slot_array = (Slot *)(table + HEADER_BYTES);
    for (uint64_t i = 0; i < slots; i++) {
        slot_array[i].hash = 0;
        slot_array[i].offset = 0;
        slot_array[i].value = EMPTY;
    }
    char *names_end = table + names_at;
    uint64_t count = 0;
    for (Py_ssize_t i = 0; i < group_count; i++) {
        PyObject *names = PyTuple_GET_ITEM(items[i], 0), *given = PyTuple_GET_ITEM(items[i], 1);
        uint32_t value;
        if (check_value(given, &value) < 0) goto fail;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(names); j++) {
            Py_ssize_t length;
            const char *bytes = key_bytes(PyList_GET_ITEM(names, j), &length);
            if (bytes == NULL) goto fail;
            /* Sized in the first pass; resolve() is our own code and leaves the lists alone, but names that grew
             * are refused rather than written past the end. */
            if (count == total || (uint64_t)(names_end - table) + 2 + (uint64_t)length > names_at + name_bytes) {
                PyErr_SetString(PyExc_RuntimeError, "a group changed while the table was built");
                goto fail;
            }
            Slot *found;
            int added = insert(table, bytes, length, value, names_end, &count, &found);
            if (added < 0) goto fail;
            if (added) {
                names_end += 2 + length;
                continue;
            }
            if (found->value == value) continue; /* the same value again: nothing to resolve */
            PyObject *chosen = PyObject_CallFunction(resolve, "kOn", (unsigned long)found->value, given, i);
            if (chosen == NULL) goto fail;
            int bad = check_value(chosen, &found->value);
            Py_DECREF(chosen);
            if (bad < 0) goto fail;
        }
    }
    ((Header *)table)->names = count;
    Py_DECREF(sequence);
    if (names_end != table + names_at + name_bytes) /* names given twice: the table ends at the last one */
        _PyBytes_Resize(&result, (Py_ssize_t)(names_end - table));
    return result;
fail:
    Py_XDECREF(result);
    Py_DECREF(sequence);
    return NULL;
}

/* ---- looking up (in the serving process) ---- */

typedef struct {
    PyObject_HEAD Py_buffer view;
    const Header *header;
    const Slot *slots;
    const char *names;
    uint64_t names_length;
} NameTable;

static int NameTable_init(NameTable *self, PyObject *args, PyObject *kwargs) {
    PyObject *source;
    if (!PyArg_ParseTuple(args, "O:NameTable", &source)) return -1;
    if (self->view.obj != NULL) {
        PyErr_SetString(PyExc_TypeError, "a NameTable is initialised once");
        return -1;
    }
    if (PyObject_GetBuffer(source, &self->view, PyBUF_SIMPLE) < 0) return -1;
    const char *table = self->view.buf;
    Header header;
    uint64_t length = (uint64_t)self->view.len;
    if (length < HEADER_BYTES || ((uintptr_t)table & 7) != 0) goto bad;
    memcpy(&header, table, sizeof header);
    if (header.magic != MAGIC || (header.mask & (header.mask + 1)) != 0 || header.mask >= length / SLOT_BYTES ||
        header.names_at != HEADER_BYTES + (header.mask + 1) * SLOT_BYTES || header.names_at > length ||
        header.names > header.mask)
        goto bad;
    self->header = (const Header *)table;
    self->slots = (const Slot *)(table + HEADER_BYTES);
    self->names = table + header.names_at;
    self->names_length = length - header.names_at;
    return 0;
bad:
    PyBuffer_Release(&self->view);
    PyErr_SetString(PyExc_ValueError, "not a name table (or cut short)");
    return -1;
}

static void NameTable_dealloc(NameTable *self) {
    if (self->view.obj != NULL) PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* get(name, default=None): the value of ``name``, or ``default``. */
static PyObject *NameTable_get(NameTable *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(name, default=None)");
        return NULL;
    }
    PyObject *otherwise = nargs == 2 ? args[1] : Py_None;
    if (self->header == NULL) {
        PyErr_SetString(PyExc_ValueError, "an empty NameTable");
        return NULL;
    }
    Py_ssize_t length;
    const char *bytes = key_bytes(args[0], &length);
    if (bytes == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return NULL;
        PyErr_Clear(); /* a lone surrogate: no stored name has one */
        return Py_NewRef(otherwise);
    }
    uint64_t hash = siphash13(self->header->key, bytes, length), mask = self->header->mask;
    for (uint64_t at = hash & mask, probes = 0; probes <= mask; at = (at + 1) & mask, probes++) {
        const Slot *slot = &self->slots[at];
        if (slot->value == EMPTY) return Py_NewRef(otherwise);
        if (slot->hash != hash || (uint64_t)slot->offset + 2 > self->names_length) continue;
        uint16_t stored;
        memcpy(&stored, self->names + slot->offset, 2);
        if (stored == length && (uint64_t)slot->offset + 2 + stored <= self->names_length &&
            memcmp(self->names + slot->offset + 2, bytes, (size_t)length) == 0)
            return PyLong_FromUnsignedLong(slot->value);
    }
    return Py_NewRef(otherwise); /* no free slot: only a damaged table, whose every slot was probed */
}

static Py_ssize_t NameTable_length(NameTable *self) {
    return self->header == NULL ? 0 : (Py_ssize_t)self->header->names;
}

static PyMethodDef NameTable_methods[] = {
    {"get", (PyCFunction)(void (*)(void))NameTable_get, METH_FASTCALL, "get(name, default=None)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods NameTable_as_sequence = {.sq_length = (lenfunc)NameTable_length};

/* Its bytes, read-only: what the child writes to the file (policy/apart.py). */
static int NameTable_getbuffer(NameTable *self, Py_buffer *view, int flags) {
    if (self->header == NULL) {
        PyErr_SetString(PyExc_BufferError, "an empty NameTable");
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->view.buf, self->view.len, 1, flags);
}

static PyBufferProcs NameTable_as_buffer = {.bf_getbuffer = (getbufferproc)NameTable_getbuffer};

static PyTypeObject NameTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ztdns.policy._nametable.NameTable",
    .tp_doc = "NameTable(buffer): a table made by build(), looked up in place (the buffer is held until freed).",
    .tp_basicsize = sizeof(NameTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)NameTable_init,
    .tp_dealloc = (destructor)NameTable_dealloc,
    .tp_methods = NameTable_methods,
    .tp_as_sequence = &NameTable_as_sequence,
    .tp_as_buffer = &NameTable_as_buffer,
};

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, "build(groups, resolve) -> bytes: the table of the names of (names, value) groups"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nametable", NULL, -1, methods};

PyMODINIT_FUNC PyInit__nametable(void) {
    if (PyType_Ready(&NameTableType) < 0) return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) return NULL;
    if (PyModule_AddObjectRef(created, "NameTable", (PyObject *)&NameTableType) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
