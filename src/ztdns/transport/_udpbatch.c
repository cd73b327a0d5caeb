/* Batched UDP receive and send for the UDP lane (transport/udp.py): recvmmsg(2) and sendmmsg(2), which Python's
 * socket module lacks. One system call moves up to BATCH datagrams; the GIL is released while it blocks. And the
 * plain replays of a batch answered in C (replay_run, below), the rest left to Python.
 *
 * Addresses travel as the raw sockaddr bytes the kernel wrote (struct sockaddr_in or sockaddr_in6): the lane keys
 * its per-client memo on them and hands them back to send() unchanged, so no address is turned into text per
 * packet. Linux only; setup builds it optionally and udp.py falls back to recvfrom/sendto when it is absent.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define BATCH 64
/* Senders remembered per received batch for reusing their sockaddr objects (recv, below). */
#define RECENT_PEERS 4

/* recv(fd, buffer, size) -> list[tuple[bytes, bytes]]: (datagram, sockaddr) pairs, at least one.
 * Blocks until a datagram arrives, then takes whatever else is already queued, up to len(buffer) // size (at most
 * BATCH) datagrams of at most `size` bytes each (a longer one arrives cut, as with recvfrom). */
static PyObject *udpbatch_recv(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer buffer;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iw*n", &fd, &buffer, &size)) return NULL;
    if (size <= 0 || buffer.len < size) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "the buffer must hold at least one datagram of `size` bytes");
        return NULL;
    }
    Py_ssize_t count = buffer.len / size;
    if (count > BATCH) count = BATCH;
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage names[BATCH];
    memset(messages, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (Py_ssize_t i = 0; i < count; i++) {
        vectors[i].iov_base = (char *)buffer.buf + i * size;
        vectors[i].iov_len = (size_t)size;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = &names[i];
        messages[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    }
    int received;
    Py_BEGIN_ALLOW_THREADS
    received = recvmmsg(fd, messages, (unsigned int)count, MSG_WAITFORONE, NULL);
    Py_END_ALLOW_THREADS
    if (received < 0) {
        PyBuffer_Release(&buffer);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New(received);
    if (result == NULL) goto done;
    /* A batch mostly comes from a few peers (one, from a client that pipelines on one socket): a datagram from
     * the sender of one of the last few gets that one's sockaddr object, so the lane's dictionaries find it by
     * identity with its hash already computed, and no new object is made. */
    PyObject *recent[RECENT_PEERS] = {NULL};
    for (int i = 0; i < received; i++) {
        size_t length = messages[i].msg_len < (unsigned int)size ? messages[i].msg_len : (size_t)size;
        socklen_t namelen = messages[i].msg_hdr.msg_namelen;
        if (namelen > sizeof(struct sockaddr_storage)) namelen = sizeof(struct sockaddr_storage);
        PyObject *data = PyBytes_FromStringAndSize(vectors[i].iov_base, (Py_ssize_t)length), *name = NULL;
        if (data == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        for (int r = 0; r < RECENT_PEERS && recent[r] != NULL; r++) {
            if ((size_t)PyBytes_GET_SIZE(recent[r]) == namelen &&
                memcmp(PyBytes_AS_STRING(recent[r]), &names[i], namelen) == 0) {
                name = Py_NewRef(recent[r]);
                break;
            }
        }
        if (name == NULL) {
            name = PyBytes_FromStringAndSize((char *)&names[i], (Py_ssize_t)namelen);
            if (name != NULL) { /* the newest first: the oldest remembered one makes room */
                memmove(&recent[1], &recent[0], sizeof(PyObject *) * (RECENT_PEERS - 1));
                recent[0] = name; /* borrowed: the result list holds it */
            }
        }
        PyObject *pair = name == NULL ? NULL : PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(data);
            Py_XDECREF(name);
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(pair, 0, data);
        PyTuple_SET_ITEM(pair, 1, name);
        PyList_SET_ITEM(result, i, pair);
    }
done:
    PyBuffer_Release(&buffer);
    return result;
}

/* send(fd, answers) -> int: send each (datagram, sockaddr) pair of the list `answers`, BATCH per system call.
 * A datagram the kernel refuses (an unreachable or invalid address, a full buffer) is skipped, as the lane skips a
 * failed sendto; the number of datagrams sent is returned. */
static PyObject *udpbatch_send(PyObject *self, PyObject *args) {
    int fd;
    PyObject *answers;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &answers)) return NULL;
    /* Our own references: the list may change while the GIL is released, its items must not go away. */
    PyObject *held = PySequence_Tuple(answers);
    if (held == NULL) return NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(held), sent = 0;
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    for (Py_ssize_t start = 0; start < total;) {
        Py_ssize_t count = total - start < BATCH ? total - start : BATCH;
        memset(messages, 0, sizeof(struct mmsghdr) * (size_t)count);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *pair = PyTuple_GET_ITEM(held, start + i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
                !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
                Py_DECREF(held);
                PyErr_SetString(PyExc_TypeError, "answers must be (bytes, bytes) pairs");
                return NULL;
            }
            PyObject *data = PyTuple_GET_ITEM(pair, 0), *name = PyTuple_GET_ITEM(pair, 1);
            vectors[i].iov_base = PyBytes_AS_STRING(data);
            vectors[i].iov_len = (size_t)PyBytes_GET_SIZE(data);
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = PyBytes_AS_STRING(name);
            messages[i].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(name);
        }
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = sendmmsg(fd, messages, (unsigned int)count, 0);
        Py_END_ALLOW_THREADS
        if (done < 0) {
            if (errno == EINTR) continue;
            done = 1; /* the first one failed: skip it */
        } else {
            sent += done;
            if (done == 0) done = 1;
        }
        start += done;
    }
    Py_DECREF(held);
    return PyLong_FromSsize_t(sent);
}

/* A float attribute of `object` into *value; -1 with an exception set when it is missing or not a float. */
static int float_attribute(PyObject *object, PyObject *name, double *value) {
    PyObject *attribute = PyObject_GetAttr(object, name);
    if (attribute == NULL) return -1;
    *value = PyFloat_AsDouble(attribute);
    Py_DECREF(attribute);
    return *value == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *name_expires, *name_guard, *name_rerender_at, *name_entry, *name_prefetch_at, *name_tail,
    *name_answered, *name_hits;

/* replay_run(batch, start, peers, memo, tables, now, in_order) -> int
 * The plain case of Replays.answer (replay.py) for the datagrams of `batch` (a list of (query, peer)) from index
 * `start` on, for Frontend.fast_batch (handler.py): a query whose bytes after the ID are in its identity's exact
 * table (tables[identity], Replays.exact) as (replay, 0, limit), with the replay not expired, without a guard, its
 * TTLs current (now < rerender_at), no prefetch due and its answer within `limit`. For each, the answer (the
 * query's ID, then replay.tail) is made, the cache entry's hits counted, (replay.answered, query, answer, peer)
 * appended to the peer's list (peers[peer] is (client, replayable, identity, list), made from memo[peer], which is
 * (client, replayable, identity), when the peer is new in the batch) and the peer to `in_order` unless it is None. Returns the index of the first datagram it leaves to Python (anything else: a miss, another
 * spelling, an expiry, a rerender, an unknown peer...) or len(batch): Python answers that one and calls again.
 * Without this extension Python answers every datagram the same way (tests/test_replay_batch.py). */
static PyObject *udpbatch_replay_run(PyObject *self, PyObject *args) {
    PyObject *batch, *peers, *memo, *tables, *in_order;
    Py_ssize_t start;
    double now;
    if (!PyArg_ParseTuple(args, "O!nO!O!O!dO", &PyList_Type, &batch, &start, &PyDict_Type, &peers, &PyDict_Type,
                          &memo, &PyDict_Type, &tables, &now, &in_order))
        return NULL;
    if (in_order != Py_None && !PyList_Check(in_order)) {
        PyErr_SetString(PyExc_TypeError, "in_order must be a list or None");
        return NULL;
    }
    Py_ssize_t index = start < 0 ? 0 : start;
    for (; index < PyList_GET_SIZE(batch); index++) {
        PyObject *item = PyList_GET_ITEM(batch, index);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) break;
        PyObject *wire = PyTuple_GET_ITEM(item, 0), *peer = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_Check(wire) || PyBytes_GET_SIZE(wire) < 12) break;
        PyObject *state = PyDict_GetItemWithError(peers, peer); /* borrowed */
        if (state == NULL) {
            if (PyErr_Occurred()) return NULL;
            /* First seen in this batch: (client, replayable, identity) from the runtime's memo, with a new list. */
            PyObject *seen = PyDict_GetItemWithError(memo, peer); /* borrowed */
            if (seen == NULL) {
                if (PyErr_Occurred()) return NULL;
                break;
            }
            if (!PyTuple_Check(seen) || PyTuple_GET_SIZE(seen) != 3) break;
            Py_INCREF(seen); /* another lane thread may clear the memo while an allocation runs a finaliser */
            PyObject *found_for = PyList_New(0);
            if (found_for == NULL) {
                Py_DECREF(seen);
                return NULL;
            }
            state = PyTuple_Pack(4, PyTuple_GET_ITEM(seen, 0), PyTuple_GET_ITEM(seen, 1), PyTuple_GET_ITEM(seen, 2),
                                 found_for);
            Py_DECREF(found_for);
            Py_DECREF(seen);
            if (state == NULL) return NULL;
            int stored = PyDict_SetItem(peers, peer, state);
            Py_DECREF(state); /* the dict holds it */
            if (stored < 0) return NULL;
        }
        if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 4 || PyTuple_GET_ITEM(state, 1) != Py_True ||
            !PyList_Check(PyTuple_GET_ITEM(state, 3)))
            break;
        PyObject *exact = PyDict_GetItemWithError(tables, PyTuple_GET_ITEM(state, 2)); /* borrowed */
        if (exact == NULL) {
            if (PyErr_Occurred()) return NULL;
            break;
        }
        if (!PyDict_Check(exact)) break;
        PyObject *key = PyBytes_FromStringAndSize(PyBytes_AS_STRING(wire) + 2, PyBytes_GET_SIZE(wire) - 2);
        if (key == NULL) return NULL;
        PyObject *found = PyDict_GetItemWithError(exact, key); /* borrowed */
        Py_DECREF(key);
        if (found == NULL) {
            if (PyErr_Occurred()) return NULL;
            break;
        }
        if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 3 || !PyLong_Check(PyTuple_GET_ITEM(found, 1)) ||
            !PyLong_Check(PyTuple_GET_ITEM(found, 2)))
            break;
        long name_end = PyLong_AsLong(PyTuple_GET_ITEM(found, 1));
        Py_ssize_t limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(found, 2));
        if ((name_end == -1 || limit == -1) && PyErr_Occurred()) return NULL;
        if (name_end != 0) break; /* the client's spelling is spliced in by Python */
        /* Our own reference: another thread may replace the table's entry while we read the replay. */
        PyObject *replay = Py_NewRef(PyTuple_GET_ITEM(found, 0));
        PyObject *guard = NULL, *entry = NULL, *tail = NULL, *answered = NULL, *answer = NULL, *hit = NULL;
        double expires, rerender_at, prefetch_at;
        int plain = 0; /* 1: answered here; 0: left to Python; -1: an error */
        if (float_attribute(replay, name_expires, &expires) < 0) goto error;
        if (now >= expires) goto done;
        if ((guard = PyObject_GetAttr(replay, name_guard)) == NULL) goto error;
        if (guard != Py_None) goto done;
        if (float_attribute(replay, name_rerender_at, &rerender_at) < 0) goto error;
        if (now >= rerender_at) goto done;
        if ((entry = PyObject_GetAttr(replay, name_entry)) == NULL) goto error;
        if (entry != Py_None) {
            if (float_attribute(replay, name_prefetch_at, &prefetch_at) < 0) goto error;
            if (now >= prefetch_at) goto done;
        }
        if ((tail = PyObject_GetAttr(replay, name_tail)) == NULL) goto error;
        if (!PyBytes_Check(tail) || PyBytes_GET_SIZE(tail) + 2 > limit) goto done;
        if ((answered = PyObject_GetAttr(replay, name_answered)) == NULL) goto error;
        answer = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(tail) + 2);
        if (answer == NULL) goto error;
        memcpy(PyBytes_AS_STRING(answer), PyBytes_AS_STRING(wire), 2);
        memcpy(PyBytes_AS_STRING(answer) + 2, PyBytes_AS_STRING(tail), (size_t)PyBytes_GET_SIZE(tail));
        if (entry != Py_None) { /* popularity only, as in Replays.answer */
            PyObject *hits = PyObject_GetAttr(entry, name_hits);
            if (hits == NULL) goto error;
            long count = PyLong_AsLong(hits);
            Py_DECREF(hits);
            if (count == -1 && PyErr_Occurred()) goto error;
            PyObject *more = PyLong_FromLong(count + 1);
            if (more == NULL) goto error;
            int set = PyObject_SetAttr(entry, name_hits, more);
            Py_DECREF(more);
            if (set < 0) goto error;
        }
        hit = PyTuple_Pack(4, answered, wire, answer, peer);
        if (hit == NULL) goto error;
        int appended = PyList_Append(PyTuple_GET_ITEM(state, 3), hit);
        Py_DECREF(hit);
        if (appended < 0 || (in_order != Py_None && PyList_Append(in_order, peer) < 0)) goto error;
        plain = 1;
        goto done;
    error:
        plain = -1;
    done:
        Py_DECREF(replay);
        Py_XDECREF(guard);
        Py_XDECREF(entry);
        Py_XDECREF(tail);
        Py_XDECREF(answered);
        Py_XDECREF(answer);
        if (plain < 0) return NULL;
        if (plain == 0) break;
    }
    return PyLong_FromSsize_t(index);
}

static PyMethodDef udpbatch_methods[] = {
    {"recv", udpbatch_recv, METH_VARARGS, "recv(fd, buffer, size) -> list of (datagram, sockaddr)"},
    {"send", udpbatch_send, METH_VARARGS, "send(fd, answers) -> number sent"},
    {"replay_run", udpbatch_replay_run, METH_VARARGS,
     "replay_run(batch, start, peers, memo, tables, now, in_order) -> index of the first datagram left to Python"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpbatch_module = {
    PyModuleDef_HEAD_INIT, "_udpbatch", "recvmmsg/sendmmsg for the UDP lane", -1, udpbatch_methods,
};

PyMODINIT_FUNC PyInit__udpbatch(void) {
    struct {
        PyObject **name;
        const char *text;
    } names[] = {
        {&name_expires, "expires"}, {&name_guard, "guard"}, {&name_rerender_at, "rerender_at"},
        {&name_entry, "entry"}, {&name_prefetch_at, "prefetch_at"}, {&name_tail, "tail"},
        {&name_answered, "answered"}, {&name_hits, "hits"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].name == NULL && (*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    }
    PyObject *module = PyModule_Create(&udpbatch_module);
    if (module != NULL && PyModule_AddIntConstant(module, "BATCH", BATCH) < 0) Py_CLEAR(module);
    return module;
}
