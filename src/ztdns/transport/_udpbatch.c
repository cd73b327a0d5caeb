/* Batched UDP receive and send for the UDP lane (transport/udp.py): recvmmsg(2) and sendmmsg(2), which Python's
 * socket module lacks. One system call moves up to BATCH datagrams; the GIL is released while it blocks.
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
    for (int i = 0; i < received; i++) {
        size_t length = messages[i].msg_len < (unsigned int)size ? messages[i].msg_len : (size_t)size;
        PyObject *pair = Py_BuildValue(
            "(y#y#)", vectors[i].iov_base, (Py_ssize_t)length, (char *)&names[i],
            (Py_ssize_t)messages[i].msg_hdr.msg_namelen);
        if (pair == NULL) {
            Py_CLEAR(result);
            goto done;
        }
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

static PyMethodDef udpbatch_methods[] = {
    {"recv", udpbatch_recv, METH_VARARGS, "recv(fd, buffer, size) -> list of (datagram, sockaddr)"},
    {"send", udpbatch_send, METH_VARARGS, "send(fd, answers) -> number sent"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpbatch_module = {
    PyModuleDef_HEAD_INIT, "_udpbatch", "recvmmsg/sendmmsg for the UDP lane", -1, udpbatch_methods,
};

PyMODINIT_FUNC PyInit__udpbatch(void) {
    PyObject *module = PyModule_Create(&udpbatch_module);
    if (module != NULL && PyModule_AddIntConstant(module, "BATCH", BATCH) < 0) Py_CLEAR(module);
    return module;
}
