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
#include <structmember.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>

#define BATCH 64
/* Senders remembered per received batch for reusing their sockaddr objects (recv, below). */
#define RECENT_PEERS 4

/* recvmmsg of up to len(buffer) // size (at most BATCH) datagrams of at most `size` bytes into `buffer`, their
 * senders into `names`, without the GIL: blocks until one arrives, then takes whatever else is queued. The number
 * received, or -1 with an exception set. */
static int receive(int fd, Py_buffer *buffer, Py_ssize_t size, struct mmsghdr *messages, struct iovec *vectors,
                   struct sockaddr_storage *names) {
    if (size <= 0 || buffer->len < size) {
        PyErr_SetString(PyExc_ValueError, "the buffer must hold at least one datagram of `size` bytes");
        return -1;
    }
    Py_ssize_t count = buffer->len / size;
    if (count > BATCH) count = BATCH;
    memset(messages, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (Py_ssize_t i = 0; i < count; i++) {
        vectors[i].iov_base = (char *)buffer->buf + i * size;
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
    if (received < 0) PyErr_SetFromErrno(PyExc_OSError);
    return received;
}

/* recv(fd, buffer, size) -> list[tuple[bytes, bytes]]: (datagram, sockaddr) pairs, at least one.
 * Blocks until a datagram arrives, then takes whatever else is already queued, up to len(buffer) // size (at most
 * BATCH) datagrams of at most `size` bytes each (a longer one arrives cut, as with recvfrom). */
static PyObject *udpbatch_recv(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer buffer;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iw*n", &fd, &buffer, &size)) return NULL;
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage names[BATCH];
    int received = receive(fd, &buffer, size, messages, vectors, names);
    if (received < 0) {
        PyBuffer_Release(&buffer);
        return NULL;
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

/* Send `count` prepared messages without the GIL, skipping one the kernel refuses (an unreachable or invalid
 * address, a full buffer), as the lane skips a failed sendto; the number sent. */
static Py_ssize_t send_all(int fd, struct mmsghdr *messages, Py_ssize_t count) {
    Py_ssize_t sent = 0;
    for (Py_ssize_t start = 0; start < count;) {
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = sendmmsg(fd, messages + start, (unsigned int)(count - start), 0);
        Py_END_ALLOW_THREADS
        if (done < 0 && errno == EINTR) continue;
        if (done > 0) sent += done;
        start += done <= 0 ? 1 : done; /* the first one failed: skip it */
    }
    return sent;
}

/* send(fd, answers) -> int: send each (datagram, sockaddr) pair of the list `answers`, BATCH per system call
 * (send_all); the number of datagrams sent is returned. */
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
    for (Py_ssize_t start = 0; start < total; start += BATCH) {
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
        sent += send_all(fd, messages, count);
    }
    Py_DECREF(held);
    return PyLong_FromSsize_t(sent);
}

/* An attribute read per query. The objects read (Replay, CacheEntry, Answered) are dataclasses with slots: the slot's
 * member is looked up once per type and then read directly, not through an attribute look-up each time. */
typedef struct {
    const char *text;
    PyObject *name;      /* text, interned */
    PyTypeObject *type;  /* the type last read (held), whose slot `member` is */
    PyMemberDef *member; /* NULL: not a slot of `type` (read as any attribute) */
} Slot;

static Slot slot_expires = {"expires"}, slot_guard = {"guard"}, slot_rerender_at = {"rerender_at"},
            slot_entry = {"entry"}, slot_prefetch_at = {"prefetch_at"}, slot_tail = {"tail"},
            slot_answered = {"answered"}, slot_hits = {"hits"}, slot_labels = {"labels"},
            slot_address = {"address"}, slot_certificate = {"certificate_identity"};
static Slot *slots[] = {&slot_expires, &slot_guard,  &slot_rerender_at, &slot_entry,   &slot_prefetch_at,
                        &slot_tail,    &slot_answered, &slot_hits,      &slot_labels, &slot_address,
                        &slot_certificate};
static PyObject *name_metric_labels, *text_dga;

static PyMemberDef *slot_member(PyObject *object, Slot *slot) {
    PyTypeObject *type = Py_TYPE(object);
    if (type == slot->type) return slot->member;
    PyObject *descriptor = PyObject_GetAttr((PyObject *)type, slot->name); /* a slot's member descriptor */
    if (descriptor == NULL) {
        PyErr_Clear(); /* the instance may still have it: read as any attribute */
        return NULL;
    }
    Py_XSETREF(slot->type, (PyTypeObject *)Py_NewRef(type));
    slot->member = Py_IS_TYPE(descriptor, &PyMemberDescr_Type) ? ((PyMemberDescrObject *)descriptor)->d_member : NULL;
    Py_DECREF(descriptor); /* the type holds it */
    return slot->member;
}

/* object.<slot>: a new reference, or NULL with an exception set. */
static PyObject *slot_get(PyObject *object, Slot *slot) {
    PyMemberDef *member = slot_member(object, slot);
    return member != NULL ? PyMember_GetOne((const char *)object, member) : PyObject_GetAttr(object, slot->name);
}

static int slot_set(PyObject *object, Slot *slot, PyObject *value) {
    PyMemberDef *member = slot_member(object, slot);
    return member != NULL ? PyMember_SetOne((char *)object, member, value) : PyObject_SetAttr(object, slot->name, value);
}

/* A float attribute of `object` into *value; -1 with an exception set when it is missing or not a float. */
static int float_attribute(PyObject *object, Slot *slot, double *value) {
    PyObject *attribute = slot_get(object, slot);
    if (attribute == NULL) return -1;
    *value = PyFloat_AsDouble(attribute);
    Py_DECREF(attribute);
    return *value == -1.0 && PyErr_Occurred() ? -1 : 0;
}


/* The plain case of Replays.answer (replay.py) for the query `wire` (`length` bytes, at least 12) of a client whose
 * exact table (Replays.exact[identity]) is `exact`: its bytes after the ID are there as (replay, 0, limit), the
 * replay not expired, without a guard, its TTLs current (now < rerender_at), no prefetch due and its answer within
 * `limit`. 1: found, with *tail (the answer after the ID) and *answered (replay.answered) new references, and the
 * cache entry's hits counted; 0: not plain (Python answers it, or the pipeline); -1: an error. */
static int plain_replay(PyObject *exact, const char *wire, Py_ssize_t length, double now, PyObject **tail,
                        PyObject **answered) {
    PyObject *key = PyBytes_FromStringAndSize(wire + 2, length - 2);
    if (key == NULL) return -1;
    PyObject *found = PyDict_GetItemWithError(exact, key); /* borrowed */
    Py_DECREF(key);
    if (found == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 3 || !PyLong_Check(PyTuple_GET_ITEM(found, 1)) ||
        !PyLong_Check(PyTuple_GET_ITEM(found, 2)))
        return 0;
    long name_end = PyLong_AsLong(PyTuple_GET_ITEM(found, 1));
    Py_ssize_t limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(found, 2));
    if ((name_end == -1 || limit == -1) && PyErr_Occurred()) return -1;
    if (name_end != 0) return 0; /* the client's spelling is spliced in by Python */
    /* Our own reference: another thread may replace the table's entry while we read the replay. */
    PyObject *replay = Py_NewRef(PyTuple_GET_ITEM(found, 0));
    PyObject *guard = NULL, *entry = NULL;
    double expires, rerender_at, prefetch_at;
    int plain = -1;
    *tail = *answered = NULL;
    if (float_attribute(replay, &slot_expires, &expires) < 0) goto done;
    plain = 0;
    if (now >= expires) goto done;
    plain = -1;
    if ((guard = slot_get(replay, &slot_guard)) == NULL) goto done;
    plain = 0;
    if (guard != Py_None) goto done;
    plain = -1;
    if (float_attribute(replay, &slot_rerender_at, &rerender_at) < 0) goto done;
    plain = 0;
    if (now >= rerender_at) goto done;
    plain = -1;
    if ((entry = slot_get(replay, &slot_entry)) == NULL) goto done;
    if (entry != Py_None) {
        if (float_attribute(replay, &slot_prefetch_at, &prefetch_at) < 0) goto done;
        plain = 0;
        if (now >= prefetch_at) goto done;
        plain = -1;
    }
    if ((*tail = slot_get(replay, &slot_tail)) == NULL) goto done;
    plain = 0;
    if (!PyBytes_Check(*tail) || PyBytes_GET_SIZE(*tail) + 2 > limit) goto done;
    plain = -1;
    if ((*answered = slot_get(replay, &slot_answered)) == NULL) goto done;
    if (entry != Py_None) { /* popularity only, as in Replays.answer */
        PyObject *hits = slot_get(entry, &slot_hits);
        if (hits == NULL) goto done;
        long count = PyLong_AsLong(hits);
        Py_DECREF(hits);
        if (count == -1 && PyErr_Occurred()) goto done;
        PyObject *more = PyLong_FromLong(count + 1);
        if (more == NULL) goto done;
        int set = slot_set(entry, &slot_hits, more);
        Py_DECREF(more);
        if (set < 0) goto done;
    }
    plain = 1;
done:
    Py_DECREF(replay);
    Py_XDECREF(guard);
    Py_XDECREF(entry);
    if (plain != 1) {
        Py_CLEAR(*tail);
        Py_CLEAR(*answered);
    }
    return plain;
}

/* replay_run(batch, start, peers, memo, tables, now, in_order) -> int
 * plain_replay for the datagrams of `batch` (a list of (query, peer)) from index `start` on, for
 * Frontend.fast_batch (handler.py). For each plain replay the answer (the query's ID, then replay.tail) is made,
 * (replay.answered, query, answer, peer) appended to the peer's list (peers[peer] is (client, replayable,
 * identity, list), made from memo[peer], which is (client, replayable, identity), when the peer is new in the
 * batch) and the peer to `in_order` unless it is None. Returns the index of the first datagram it leaves to Python
 * (anything else: a miss, another spelling, an expiry, a rerender, an unknown peer...) or len(batch): Python
 * answers that one and calls again. Without this extension Python answers every datagram the same way
 * (tests/test_replay_batch.py). */
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
        PyObject *tail, *answered;
        int plain = plain_replay(exact, PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire), now, &tail, &answered);
        if (plain < 0) return NULL;
        if (plain == 0) break;
        PyObject *answer = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(tail) + 2), *hit = NULL;
        if (answer != NULL) {
            memcpy(PyBytes_AS_STRING(answer), PyBytes_AS_STRING(wire), 2);
            memcpy(PyBytes_AS_STRING(answer) + 2, PyBytes_AS_STRING(tail), (size_t)PyBytes_GET_SIZE(tail));
            hit = PyTuple_Pack(4, answered, wire, answer, peer);
        }
        Py_DECREF(tail);
        Py_DECREF(answered);
        Py_XDECREF(answer);
        if (hit == NULL) return NULL;
        int appended = PyList_Append(PyTuple_GET_ITEM(state, 3), hit);
        Py_DECREF(hit);
        if (appended < 0 || (in_order != Py_None && PyList_Append(in_order, peer) < 0)) return NULL;
    }
    return PyLong_FromSsize_t(index);
}

/* A sender of a batch served by serve(): its sockaddr object, what the runtime knows of it and the answers found. */
typedef struct {
    PyObject *name;  /* the raw sockaddr, as recv gives it */
    PyObject *state; /* memo[name]: (client, replayable, identity); NULL: unknown (Python meets it first) */
    PyObject *exact; /* Replays.exact[identity]; NULL: no replays for it */
    Py_ssize_t answered;
} Sender;

/* One plain replay found by serve(). */
typedef struct {
    int sender, datagram;
    PyObject *answered;
    Py_ssize_t offset, length; /* of the answer in the send buffer */
} Found;

static double clock_seconds(clockid_t clock) {
    struct timespec now;
    clock_gettime(clock, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

typedef int (*add_record_function)(PyObject *ring, double when, double latency, PyObject *client, PyObject *answer,
                                   const char *query, Py_ssize_t query_length, const char *response,
                                   Py_ssize_t response_length);
static add_record_function add_record;

/* Whether `client` is under a DGA verdict in `blocks` (Detector.blocks): its replays stop, as in
 * Detector.admit_replays (("dga", its certificate identity or address) blocked). 1 yes, 0 no, -1 an error. */
static int dga_blocked(PyObject *blocks, PyObject *client) {
    PyObject *subject = slot_get(client, &slot_certificate);
    if (subject == Py_None) {
        Py_DECREF(subject);
        subject = slot_get(client, &slot_address);
    }
    if (subject == NULL) return -1;
    PyObject *key = PyTuple_Pack(2, text_dga, subject);
    Py_DECREF(subject);
    if (key == NULL) return -1;
    int blocked = PyDict_Contains(blocks, key);
    Py_DECREF(key);
    return blocked;
}

/* serve(fd, buffer, size, out, plan) -> (left, charged, counted, latency)
 * One batch of the UDP lane with its plain replays answered here: recv() into `buffer`, then `plan()`
 * (Frontend.plain_replays: called once the datagrams are in, so that it sees the config and verdicts in force) gives
 * (memo, tables, ring, blocks), or None when a per-query decision needs Python (then every datagram is left to it).
 * For each datagram of a sender known to `memo` (runtime.peers: sockaddr -> (client, replayable, identity)) and not
 * under a DGA verdict in `blocks` (Detector.blocks, or None: none in force), plain_replay()
 * in its identity's table of `tables` (Replays.exact); the answer (query ID + replay.tail) is written into `out`,
 * its query log record added to `ring` (a _lines.Records, or None) from the two buffers, and the answers are sent
 * with sendmmsg. Returns what Python must still see: `left`, the (datagram, sockaddr) pairs not answered (for
 * fast_batch, then the pipeline); `charged`, (client, identity, count) per sender answered, for the rate limits'
 * charges; `counted`, (metric labels, count) per label set answered; and the answers' latency (from the datagrams'
 * arrival to their records). Answers, records and charges follow fast_batch's order: by sender as first seen, each
 * in arrival order (tests/transport/test_udp_lanes.py holds the two to the same records, metrics and answers). */
static PyObject *udpbatch_serve(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer buffer, out;
    Py_ssize_t size;
    PyObject *plan_of, *plan = NULL, *memo = NULL, *tables = NULL, *ring = Py_None, *blocks = Py_None;
    if (!PyArg_ParseTuple(args, "iw*nw*O", &fd, &buffer, &size, &out, &plan_of)) return NULL;
    PyObject *result = NULL, *left = NULL, *charged = NULL, *counted = NULL;
    Sender senders[BATCH];
    Found found[BATCH];
    PyObject *labels[BATCH];
    Py_ssize_t label_counts[BATCH];
    int sender_count = 0, found_count = 0, label_count = 0;
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage names[BATCH];
    int received = receive(fd, &buffer, size, messages, vectors, names);
    if (received < 0) goto done;
    double now = clock_seconds(CLOCK_MONOTONIC);
    if ((left = PyList_New(0)) == NULL || (plan = PyObject_CallNoArgs(plan_of)) == NULL) goto done;
    if (plan != Py_None) {
        if (!PyArg_ParseTuple(plan, "O!O!OO;plan() gives (memo, tables, ring, blocks) or None", &PyDict_Type, &memo,
                              &PyDict_Type, &tables, &ring, &blocks))
            goto done;
        if (blocks != Py_None && !PyDict_Check(blocks)) {
            PyErr_SetString(PyExc_TypeError, "blocks must be a dict or None");
            goto done;
        }
        if (ring != Py_None && add_record == NULL &&
            (add_record = (add_record_function)PyCapsule_Import("ztdns.observe._lines.add_record", 0)) == NULL)
            goto done;
    }
    Py_ssize_t used = 0;
    int last = 0;
    for (int i = 0; i < received; i++) {
        const char *data = vectors[i].iov_base;
        Py_ssize_t length = messages[i].msg_len < (unsigned int)size ? (Py_ssize_t)messages[i].msg_len : size;
        socklen_t namelen = messages[i].msg_hdr.msg_namelen;
        if (namelen > sizeof(struct sockaddr_storage)) namelen = sizeof(struct sockaddr_storage);
        /* The sender: mostly the previous datagram's (a client pipelines on one socket). */
        int at = -1;
        for (int probe = 0; probe < sender_count; probe++) {
            int candidate = (last + probe) % sender_count;
            PyObject *name = senders[candidate].name;
            if ((size_t)PyBytes_GET_SIZE(name) == namelen && memcmp(PyBytes_AS_STRING(name), &names[i], namelen) == 0) {
                at = candidate;
                break;
            }
        }
        if (at < 0) {
            Sender *sender = &senders[sender_count];
            sender->state = sender->exact = NULL;
            sender->answered = 0;
            if ((sender->name = PyBytes_FromStringAndSize((char *)&names[i], (Py_ssize_t)namelen)) == NULL) goto done;
            at = sender_count++;
            PyObject *state = memo == NULL ? NULL : PyDict_GetItemWithError(memo, sender->name); /* borrowed */
            if (state == NULL && PyErr_Occurred()) goto done;
            if (state != NULL && PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 3 &&
                PyTuple_GET_ITEM(state, 1) == Py_True) {
                sender->state = Py_NewRef(state); /* another lane thread may clear the memo meanwhile */
                int blocked = blocks == Py_None ? 0 : dga_blocked(blocks, PyTuple_GET_ITEM(state, 0));
                if (blocked < 0) goto done;
                PyObject *exact = blocked ? NULL : PyDict_GetItemWithError(tables, PyTuple_GET_ITEM(state, 2));
                if (exact == NULL && PyErr_Occurred()) goto done;
                if (exact != NULL && PyDict_Check(exact)) sender->exact = Py_NewRef(exact);
            }
        }
        last = at;
        Sender *sender = &senders[at];
        if (sender->exact != NULL && length >= 12) {
            PyObject *tail, *answered;
            int plain = plain_replay(sender->exact, data, length, now, &tail, &answered);
            if (plain < 0) goto done;
            if (plain == 1) {
                Py_ssize_t answer = PyBytes_GET_SIZE(tail) + 2;
                if (used + answer <= out.len) {
                    char *into = (char *)out.buf + used;
                    memcpy(into, data, 2);
                    memcpy(into + 2, PyBytes_AS_STRING(tail), (size_t)answer - 2);
                    found[found_count++] = (Found){at, i, answered, used, answer};
                    sender->answered++;
                    used += answer;
                    Py_DECREF(tail);
                    continue;
                }
                Py_DECREF(tail);
                Py_DECREF(answered);
            }
        }
        PyObject *datagram = PyBytes_FromStringAndSize(data, length);
        PyObject *pair = datagram == NULL ? NULL : PyTuple_Pack(2, datagram, sender->name);
        Py_XDECREF(datagram);
        if (pair == NULL) goto done;
        int appended = PyList_Append(left, pair);
        Py_DECREF(pair);
        if (appended < 0) goto done;
    }
    double latency = clock_seconds(CLOCK_MONOTONIC) - now, when = clock_seconds(CLOCK_REALTIME);
    if ((charged = PyList_New(0)) == NULL || (counted = PyList_New(0)) == NULL) goto done;
    /* By sender as first seen, each in arrival order: the charges, the records, the label counts, the messages. */
    struct mmsghdr replies[BATCH];
    struct iovec answers[BATCH];
    int ready = 0;
    memset(replies, 0, sizeof(struct mmsghdr) * (size_t)found_count);
    for (int at = 0; at < sender_count; at++) {
        Sender *sender = &senders[at];
        if (sender->answered == 0) continue;
        PyObject *client = PyTuple_GET_ITEM(sender->state, 0);
        PyObject *charge = Py_BuildValue("(OOn)", client, PyTuple_GET_ITEM(sender->state, 2), sender->answered);
        if (charge == NULL) goto done;
        int appended = PyList_Append(charged, charge);
        Py_DECREF(charge);
        if (appended < 0) goto done;
        for (int f = 0; f < found_count; f++) {
            Found *one = &found[f];
            if (one->sender != at) continue;
            const char *answer = (char *)out.buf + one->offset;
            if (ring != Py_None) {
                const char *query = vectors[one->datagram].iov_base;
                Py_ssize_t length = messages[one->datagram].msg_len < (unsigned int)size
                                        ? (Py_ssize_t)messages[one->datagram].msg_len
                                        : size;
                if (add_record(ring, when, latency, client, one->answered, query, length, answer, one->length) < 0)
                    goto done;
            }
            /* answered.labels, made on first use by metric_labels(); one count per distinct label set. */
            PyObject *made = slot_get(one->answered, &slot_labels);
            if (made == Py_None) {
                Py_DECREF(made);
                made = PyObject_CallMethodNoArgs(one->answered, name_metric_labels);
            }
            if (made == NULL) goto done;
            int group = 0;
            for (; group < label_count && labels[group] != made; group++) {
            }
            for (int other = 0; group == label_count && other < label_count; other++) {
                int equal = PyObject_RichCompareBool(labels[other], made, Py_EQ);
                if (equal < 0) {
                    Py_DECREF(made);
                    goto done;
                }
                if (equal) group = other;
            }
            if (group == label_count) {
                labels[label_count] = Py_NewRef(made);
                label_counts[label_count++] = 0;
            }
            label_counts[group]++;
            Py_DECREF(made);
            answers[ready].iov_base = (void *)answer;
            answers[ready].iov_len = (size_t)one->length;
            replies[ready].msg_hdr.msg_iov = &answers[ready];
            replies[ready].msg_hdr.msg_iovlen = 1;
            replies[ready].msg_hdr.msg_name = PyBytes_AS_STRING(sender->name);
            replies[ready].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(sender->name);
            ready++;
        }
    }
    for (int group = 0; group < label_count; group++) {
        PyObject *pair = Py_BuildValue("(On)", labels[group], label_counts[group]);
        if (pair == NULL) goto done;
        int appended = PyList_Append(counted, pair);
        Py_DECREF(pair);
        if (appended < 0) goto done;
    }
    send_all(fd, replies, ready);
    result = Py_BuildValue("(OOOd)", left, charged, counted, latency);
done:
    for (int at = 0; at < sender_count; at++) {
        Py_DECREF(senders[at].name);
        Py_XDECREF(senders[at].state);
        Py_XDECREF(senders[at].exact);
    }
    for (int f = 0; f < found_count; f++) Py_DECREF(found[f].answered);
    for (int group = 0; group < label_count; group++) Py_DECREF(labels[group]);
    Py_XDECREF(left);
    Py_XDECREF(charged);
    Py_XDECREF(counted);
    Py_XDECREF(plan); /* after the senders: it holds memo, tables and ring */
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef udpbatch_methods[] = {
    {"recv", udpbatch_recv, METH_VARARGS, "recv(fd, buffer, size) -> list of (datagram, sockaddr)"},
    {"send", udpbatch_send, METH_VARARGS, "send(fd, answers) -> number sent"},
    {"replay_run", udpbatch_replay_run, METH_VARARGS,
     "replay_run(batch, start, peers, memo, tables, now, in_order) -> index of the first datagram left to Python"},
    {"serve", udpbatch_serve, METH_VARARGS,
     "serve(fd, buffer, size, out, plan) -> (left, charged, counted, latency)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpbatch_module = {
    PyModuleDef_HEAD_INIT, "_udpbatch", "recvmmsg/sendmmsg for the UDP lane", -1, udpbatch_methods,
};

PyMODINIT_FUNC PyInit__udpbatch(void) {
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        if (slots[i]->name == NULL && (slots[i]->name = PyUnicode_InternFromString(slots[i]->text)) == NULL) return NULL;
    }
    if (name_metric_labels == NULL && (name_metric_labels = PyUnicode_InternFromString("metric_labels")) == NULL)
        return NULL;
    if (text_dga == NULL && (text_dga = PyUnicode_InternFromString("dga")) == NULL) return NULL;
    PyObject *module = PyModule_Create(&udpbatch_module);
    if (module != NULL && PyModule_AddIntConstant(module, "BATCH", BATCH) < 0) Py_CLEAR(module);
    return module;
}
