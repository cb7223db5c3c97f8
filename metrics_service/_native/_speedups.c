/* Per-line work in C, each function beside a Python path that gives the same
 * result (_native/__init__.py says which is used): replay's index() and columns(),
 * which answer None for a block they leave to Python (store/columns.py), event_ids()
 * (store/chunk.py), and ingest's long_digits() and bodies() (ingest/fast.py),
 * lines() and rows() (store/writer.py), carriers() (ingest/test_tag.py), and the SDK
 * formats' segment_events() and posthog_events() (ingest/formats/), which answer None
 * for a batch they leave to the declared mapping. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Both keys hold the only '_' of their text: a line is searched for '_', far
 * rarer than '"', and each one is checked for the key around it. */
static const char VISITOR[] = "\"visitor_id\"";
static const char EVENT_ID[] = "\"event_id\"";
#define VISITOR_AT 8 /* the '_' in "visitor_id" */
#define EVENT_ID_AT 6
#define VISITOR_LEN (sizeof(VISITOR) - 1)
#define EVENT_ID_LEN (sizeof(EVENT_ID) - 1)

static int
holds(const char *p, const char *end, const char *at, const char *what, size_t len)
{
    return at >= p && (size_t)(end - at) >= len && memcmp(at, what, len) == 0;
}

/* One line (without its newline): 0 or 1 for its event_id flag, -1 when it is not plain. */
static int
line_flag(const char *p, const char *end)
{
    if (end - p < 2 || p[0] != '{' || end[-1] != '}')
        return -1;
    int visitors = 0, ids = 0, flag = 0;
    for (const char *q = p; (q = memchr(q, '_', end - q)) != NULL; q++) {
        const char *key = q - VISITOR_AT;
        if (holds(p, end, key, VISITOR, VISITOR_LEN)) {
            if (++visitors > 1 || !holds(p, end, key + VISITOR_LEN, ":\"", 2))
                return -1;
            continue;
        }
        key = q - EVENT_ID_AT;
        if (holds(p, end, key, EVENT_ID, EVENT_ID_LEN)) {
            if (++ids > 1)
                return -1;
            key += EVENT_ID_LEN;
            if (holds(p, end, key, ":\"", 2))
                flag = 1;
            else if (!holds(p, end, key, ":null", 5))
                return -1;
        }
    }
    return visitors == 1 ? flag : -1;
}

PyDoc_STRVAR(index_doc,
"index(block) -> (text, ends, flags) | None\n\n"
"Whole lines (each ending in a newline) as the ring packs them: the lines joined\n"
"without newlines, each line's end in text as native uint32, and each line's\n"
"event_id flag. None unless every line is plain: no backslash in the block, and\n"
"each line opens with '{', closes with '}', and holds the string \"visitor_id\"\n"
"once, followed by :\" and \"event_id\" at most once, followed by :\" or :null.");

static PyObject *
index_lines(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "index() takes bytes");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    if (size == 0 || size > UINT32_MAX || data[size - 1] != '\n'
        || memchr(data, '\\', size) != NULL)
        Py_RETURN_NONE;
    Py_ssize_t count = 0;
    for (const char *q = data; (q = memchr(q, '\n', data + size - q)) != NULL; q++)
        count++;
    PyObject *text = PyBytes_FromStringAndSize(NULL, size - count);
    PyObject *ends = PyBytes_FromStringAndSize(NULL, count * sizeof(uint32_t));
    PyObject *flags = PyBytes_FromStringAndSize(NULL, count);
    if (text == NULL || ends == NULL || flags == NULL)
        goto fail;
    char *out = PyBytes_AS_STRING(text);
    uint32_t *end_at = (uint32_t *)PyBytes_AS_STRING(ends);
    char *flag_at = PyBytes_AS_STRING(flags);
    uint32_t filled = 0;
    const char *p = data;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *q = memchr(p, '\n', data + size - p);
        int flag = line_flag(p, q);
        if (flag < 0) {
            Py_DECREF(text);
            Py_DECREF(ends);
            Py_DECREF(flags);
            Py_RETURN_NONE;
        }
        memcpy(out + filled, p, q - p);
        filled += (uint32_t)(q - p);
        end_at[i] = filled;
        flag_at[i] = (char)flag;
        p = q + 1;
    }
    return Py_BuildValue("(NNN)", text, ends, flags);
fail:
    Py_XDECREF(text);
    Py_XDECREF(ends);
    Py_XDECREF(flags);
    return NULL;
}

static int
digits(const Py_UCS1 *s, int n)
{
    int value = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        value = value * 10 + (s[i] - '0');
    }
    return value;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int
month_days(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* Unix milliseconds of "YYYY-MM-DDTHH:MM:SS.mmmZ", or 0 with *ok cleared. */
static int64_t
millis(PyObject *stamp, int *ok)
{
    *ok = 0;
    if (!PyUnicode_CheckExact(stamp) || !PyUnicode_IS_ASCII(stamp)
        || PyUnicode_GET_LENGTH(stamp) != 24)
        return 0;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(stamp);
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':'
        || s[19] != '.' || s[23] != 'Z')
        return 0;
    int year = digits(s, 4), month = digits(s + 5, 2), day = digits(s + 8, 2);
    int hour = digits(s + 11, 2), minute = digits(s + 14, 2);
    int second = digits(s + 17, 2), ms = digits(s + 20, 3);
    if (year < 1 || month < 1 || month > 12 || day < 1
        || day > month_days(year, month) || hour < 0 || hour > 23 || minute < 0
        || minute > 59 || second < 0 || second > 59 || ms < 0)
        return 0;
    *ok = 1;
    int64_t days = days_from_civil(year, month, day);
    return ((days * 24 + hour) * 60 + minute) * 60000 + second * 1000 + ms;
}

PyDoc_STRVAR(columns_doc,
"columns(heads, names) -> (seqs, ts, flags, codes, chunk_names, counts) | None\n\n"
"The ring's columns of decoded heads (each with .seq, .timestamp, .event and\n"
".event_id): seqs as native int64, ts as native doubles (Unix seconds of a\n"
"\"YYYY-MM-DDTHH:MM:SS.mmmZ\" timestamp, rounded as Python's ms / 1000),\n"
"event_id flags, and events as native uint16 codes into chunk_names, whose\n"
"counts go alongside. `names` (or None) maps an event to the one string kept\n"
"for it. None when a timestamp is anything else or there are over 65536 names.");

typedef struct {
    PyObject *seq, *timestamp, *event, *event_id;
} Keys;

static Keys keys;

/* Where instances of `type` keep attribute `name`: the offset of its object slot
 * (msgspec keeps a Struct's fields in such slots), or -1 to ask getattr. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    if (type->tp_getattro != PyObject_GenericGetAttr)
        return -1;
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX)
            offset = member->offset;
    }
    Py_DECREF(descr);
    return offset;
}

/* head.<name> (a new reference), read from its slot when `offset` says where. */
static PyObject *
field(PyObject *head, PyObject *name, Py_ssize_t offset)
{
    if (offset >= 0) {
        PyObject *value = *(PyObject **)((char *)head + offset);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
    }
    return PyObject_GetAttr(head, name); /* also the AttributeError of an empty slot */
}

static PyObject *
columns(PyObject *module, PyObject *args)
{
    PyObject *heads, *names;
    if (!PyArg_ParseTuple(args, "O!O:columns", &PyList_Type, &heads, &names))
        return NULL;
    if (names != Py_None && !PyDict_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "columns() takes a dict or None of names");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(heads);
    PyObject *seqs = PyBytes_FromStringAndSize(NULL, count * sizeof(int64_t));
    PyObject *ts = PyBytes_FromStringAndSize(NULL, count * sizeof(double));
    PyObject *flags = PyBytes_FromStringAndSize(NULL, count);
    PyObject *codes = PyBytes_FromStringAndSize(NULL, count * sizeof(uint16_t));
    PyObject *chunk_names = PyList_New(0);
    PyObject *index = PyDict_New();
    PyObject *value = NULL, *last = NULL;
    Py_ssize_t last_code = 0, *counts = NULL;
    if (!seqs || !ts || !flags || !codes || !chunk_names || !index)
        goto fail;
    counts = PyMem_Calloc(count ? count : 1, sizeof(Py_ssize_t));
    if (counts == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    PyTypeObject *known = NULL; /* the type whose slot offsets are these */
    Py_ssize_t seq_off = -1, ts_off = -1, id_off = -1, event_off = -1;
    int64_t *seq_at = (int64_t *)PyBytes_AS_STRING(seqs);
    double *ts_at = (double *)PyBytes_AS_STRING(ts);
    char *flag_at = PyBytes_AS_STRING(flags);
    uint16_t *code_at = (uint16_t *)PyBytes_AS_STRING(codes);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *head = PyList_GET_ITEM(heads, i);
        int ok;
        if (Py_TYPE(head) != known) {
            known = Py_TYPE(head);
            seq_off = slot_offset(known, keys.seq);
            ts_off = slot_offset(known, keys.timestamp);
            id_off = slot_offset(known, keys.event_id);
            event_off = slot_offset(known, keys.event);
        }
        if (!(value = field(head, keys.seq, seq_off)))
            goto fail;
        seq_at[i] = PyLong_AsLongLong(value);
        Py_CLEAR(value);
        if (seq_at[i] == -1 && PyErr_Occurred())
            goto fail;
        if (!(value = field(head, keys.timestamp, ts_off)))
            goto fail;
        int64_t ms = millis(value, &ok);
        Py_CLEAR(value);
        if (!ok)
            goto none;
        ts_at[i] = (double)ms / 1000.0;
        if (!(value = field(head, keys.event_id, id_off)))
            goto fail;
        flag_at[i] = value != Py_None;
        Py_CLEAR(value);
        if (!(value = field(head, keys.event, event_off)))
            goto fail;
        if (value != last) {
            PyObject *name = value;
            if (names != Py_None) {
                name = PyDict_GetItemWithError(names, value);
                if (name == NULL && PyErr_Occurred())
                    goto fail;
                if (name == NULL)
                    name = value;
            }
            PyObject *code = PyDict_GetItemWithError(index, name);
            if (code == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                last_code = PyList_GET_SIZE(chunk_names);
                if (last_code > 65535)
                    goto none;
                code = PyLong_FromSsize_t(last_code);
                if (!code || PyDict_SetItem(index, name, code) < 0
                    || PyList_Append(chunk_names, name) < 0) {
                    Py_XDECREF(code);
                    goto fail;
                }
                Py_DECREF(code);
            }
            else
                last_code = PyLong_AsSsize_t(code);
            last = value; /* held by the head, which the list holds */
        }
        Py_CLEAR(value);
        code_at[i] = (uint16_t)last_code;
        counts[last_code]++;
    }
    Py_ssize_t named = PyList_GET_SIZE(chunk_names);
    PyObject *tally = PyList_New(named);
    if (tally == NULL)
        goto fail;
    for (Py_ssize_t k = 0; k < named; k++) {
        PyObject *n = PyLong_FromSsize_t(counts[k]);
        if (n == NULL) {
            Py_DECREF(tally);
            goto fail;
        }
        PyList_SET_ITEM(tally, k, n);
    }
    PyMem_Free(counts);
    Py_DECREF(index);
    return Py_BuildValue("(NNNNNN)", seqs, ts, flags, codes, chunk_names, tally);
none:
    PyMem_Free(counts);
    Py_XDECREF(value);
    Py_XDECREF(seqs);
    Py_XDECREF(ts);
    Py_XDECREF(flags);
    Py_XDECREF(codes);
    Py_XDECREF(chunk_names);
    Py_XDECREF(index);
    Py_RETURN_NONE;
fail:
    PyMem_Free(counts);
    Py_XDECREF(value);
    Py_XDECREF(seqs);
    Py_XDECREF(ts);
    Py_XDECREF(flags);
    Py_XDECREF(codes);
    Py_XDECREF(chunk_names);
    Py_XDECREF(index);
    return NULL;
}

PyDoc_STRVAR(event_ids_doc,
"event_ids(text, ends, flags, lo) -> list[str] | None\n\n"
"A ring chunk's non-empty event_ids, entries lo and on, oldest first: from each\n"
"line flagged 1 (in text, up to its end in the uint32 array `ends`), the value\n"
"after its first \"event_id\":\". None for flags with 2 (kept aside) or ends of\n"
"another item size.");

static PyObject *
event_ids(PyObject *module, PyObject *args)
{
    PyObject *text, *ends_obj, *flags;
    Py_ssize_t lo;
    if (!PyArg_ParseTuple(args, "O!OO!n:event_ids", &PyBytes_Type, &text, &ends_obj,
                          &PyBytes_Type, &flags, &lo))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(ends_obj, &view, PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t count = view.len / 4;
    if (view.itemsize != 4 || strcmp(view.format, "I") != 0) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    if (PyBytes_GET_SIZE(flags) != count || lo < 0 || lo > count) {
        PyErr_SetString(PyExc_ValueError, "event_ids() needs a flag per end");
        goto done;
    }
    const uint32_t *ends = view.buf;
    const char *data = PyBytes_AS_STRING(text), *flag_at = PyBytes_AS_STRING(flags);
    const size_t size = (size_t)PyBytes_GET_SIZE(text);
    static const char key[] = "\"event_id\":\"";
    if ((out = PyList_New(0)) == NULL)
        goto done;
    for (Py_ssize_t i = lo; i < count; i++) {
        if (flag_at[i] & 2) {
            Py_SETREF(out, Py_NewRef(Py_None));
            goto done;
        }
        if (!(flag_at[i] & 1))
            continue;
        size_t start = i ? ends[i - 1] : 0, end = ends[i];
        const char *at = NULL, *close = NULL;
        if (start <= end && end <= size)
            at = memmem(data + start, end - start, key, sizeof(key) - 1);
        if (at != NULL) {
            at += sizeof(key) - 1;
            close = memchr(at, '"', data + end - at);
        }
        if (close == NULL) {
            PyErr_Format(PyExc_ValueError, "entry %zd has no event_id to read", i);
            Py_CLEAR(out);
            goto done;
        }
        if (close == at)
            continue; /* as replay always did: an empty id is no id */
        PyObject *id = PyUnicode_DecodeUTF8(at, close - at, NULL);
        if (id == NULL || PyList_Append(out, id) < 0) {
            Py_XDECREF(id);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(id);
    }
done:
    PyBuffer_Release(&view);
    return out;
}

#define DIGIT(c) ((unsigned char)((c) - '0') < 10)

PyDoc_STRVAR(long_digits_doc,
"long_digits(body) -> bool\n\n"
"True when `body` has 20 or more ASCII digits in a row, or a '-' followed by 19:\n"
"a number that may not fit in 64 bits.");

#define LONG_RUN(c) (DIGIT(c) || (c) == '-')

static PyObject *
long_digits(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "long_digits() takes bytes");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    /* Both patterns are 20 bytes of digits and '-': a run of those holds one of
     * every 20th byte. Look at those only; for each found there, measure its whole
     * run and look for either pattern in it, then go on past the run, so no byte
     * is read more than twice. */
    for (Py_ssize_t j = 19; j < len; j += 20) {
        if (!LONG_RUN(buf[j]))
            continue;
        Py_ssize_t lo = j, hi = j;
        while (lo > 0 && LONG_RUN(buf[lo - 1]))
            lo--;
        while (hi + 1 < len && LONG_RUN(buf[hi + 1]))
            hi++;
        if (hi - lo >= 19) {
            Py_ssize_t digits = 0;
            for (Py_ssize_t k = lo; k <= hi; k++) {
                if (!DIGIT(buf[k])) {
                    digits = 0;
                    continue;
                }
                if (++digits >= 20 || (digits == 19 && k - 19 >= lo && buf[k - 19] == '-'))
                    Py_RETURN_TRUE;
            }
        }
        j = hi;
    }
    Py_RETURN_FALSE;
}

PyDoc_STRVAR(lines_doc,
"lines(first, received, heads, bodies) -> list[bytes]\n\n"
"Stored lines, without newlines: for each body, with seqs counting up from\n"
"`first`, b'{\"seq\":<seq>,\"received_at\":\"<received>\",' + head + body.");

static PyObject *
format_lines(PyObject *module, PyObject *args)
{
    long long first;
    PyObject *received, *heads, *bodies;
    if (!PyArg_ParseTuple(args, "LO!O!O!:lines", &first, &PyBytes_Type, &received,
                          &PyList_Type, &heads, &PyList_Type, &bodies))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(bodies);
    if (PyList_GET_SIZE(heads) != count) {
        PyErr_SetString(PyExc_ValueError, "lines() needs a head per body");
        return NULL;
    }
    if (first < 0 || first > LLONG_MAX - count) {
        PyErr_SetString(PyExc_OverflowError, "lines() seqs out of range");
        return NULL;
    }
    static const char open[] = "{\"seq\":";
    static const char middle[] = ",\"received_at\":\"";
    static const char close[] = "\",";
    const Py_ssize_t fixed = sizeof(open) - 1 + sizeof(middle) - 1 + sizeof(close) - 1
                             + PyBytes_GET_SIZE(received);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *head = PyList_GET_ITEM(heads, i), *body = PyList_GET_ITEM(bodies, i);
        if (!PyBytes_Check(head) || !PyBytes_Check(body)) {
            PyErr_SetString(PyExc_TypeError, "lines() takes lists of bytes");
            Py_DECREF(out);
            return NULL;
        }
        char digits[24];
        int n = snprintf(digits, sizeof(digits), "%lld", first + i);
        Py_ssize_t size = fixed + n + PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(body);
        PyObject *line = PyBytes_FromStringAndSize(NULL, size);
        if (line == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        char *at = PyBytes_AS_STRING(line);
#define PUT(src, len) (memcpy(at, (src), (len)), at += (len))
        PUT(open, sizeof(open) - 1);
        PUT(digits, n);
        PUT(middle, sizeof(middle) - 1);
        PUT(PyBytes_AS_STRING(received), PyBytes_GET_SIZE(received));
        PUT(close, sizeof(close) - 1);
        PUT(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
        PUT(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body));
#undef PUT
        PyList_SET_ITEM(out, i, line);
    }
    return out;
}

PyDoc_STRVAR(bodies_doc,
"bodies(encoded) -> (bodies, longest)\n\n"
"msgspec's encode_lines() output, one JSON object a line, as each object without\n"
"its opening brace (what a stored line ends with), and the longest one's length.");

static PyObject *
bodies(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bodies() takes bytes");
        return NULL;
    }
    const char *p = PyBytes_AS_STRING(arg), *end = p + PyBytes_GET_SIZE(arg);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t longest = 0;
    while (p < end) {
        const char *q = memchr(p, '\n', end - p);
        if (q == NULL)
            q = end;
        if (q == p || *p != '{') {
            PyErr_SetString(PyExc_ValueError, "bodies() takes lines of JSON objects");
            Py_DECREF(out);
            return NULL;
        }
        Py_ssize_t size = q - p - 1;
        PyObject *body = PyBytes_FromStringAndSize(p + 1, size);
        if (body == NULL || PyList_Append(out, body) < 0) {
            Py_XDECREF(body);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(body);
        if (size > longest)
            longest = size;
        p = q + 1;
    }
    return Py_BuildValue("(Nn)", out, longest);
}

PyDoc_STRVAR(rows_doc,
"rows(cls, first, columns) -> list\n\n"
"cls((first + i, *(column[i] for column in columns))) for each i, where cls is a\n"
"tuple subclass with no fields of its own (a NamedTuple) and the columns are lists\n"
"of one length.");

static PyObject *
rows(PyObject *module, PyObject *args)
{
    PyTypeObject *cls;
    long long first;
    PyObject *columns;
    if (!PyArg_ParseTuple(args, "O!LO!:rows", &PyType_Type, &cls, &first,
                          &PyTuple_Type, &columns))
        return NULL;
    if (!PyType_IsSubtype(cls, &PyTuple_Type) || cls->tp_itemsize != sizeof(PyObject *)
        || cls->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "rows() takes a plain tuple subclass");
        return NULL;
    }
    Py_ssize_t width = PyTuple_GET_SIZE(columns), count = -1;
    for (Py_ssize_t k = 0; k < width; k++) {
        PyObject *column = PyTuple_GET_ITEM(columns, k);
        if (!PyList_Check(column) || (count >= 0 && PyList_GET_SIZE(column) != count)) {
            PyErr_SetString(PyExc_ValueError, "rows() takes lists of one length");
            return NULL;
        }
        count = PyList_GET_SIZE(column);
    }
    if (count < 0)
        count = 0;
    if (first > LLONG_MAX - count) {
        PyErr_SetString(PyExc_OverflowError, "rows() seqs out of range");
        return NULL;
    }
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = cls->tp_alloc(cls, width + 1);
        PyObject *seq = row ? PyLong_FromLongLong(first + i) : NULL;
        if (seq == NULL) {
            Py_XDECREF(row);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(row, 0, seq);
        for (Py_ssize_t k = 0; k < width; k++) {
            PyObject *value = PyList_GET_ITEM(PyTuple_GET_ITEM(columns, k), i);
            Py_INCREF(value);
            PyTuple_SET_ITEM(row, k + 1, value);
        }
        PyList_SET_ITEM(out, i, row);
    }
    return out;
}

PyDoc_STRVAR(carriers_doc,
"carriers(headers, name, needle) -> (values, cookies) | None\n\n"
"An ASGI header list's values of the header `name` (lowercase bytes), and its\n"
"`cookie` values holding `needle`, as two lists in order; None when it has\n"
"neither (the common case: nothing is allocated). Pairs that are not two bytes\n"
"are passed over.");

static int
pair(PyObject *item, PyObject **name, PyObject **value)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        *name = PyTuple_GET_ITEM(item, 0);
        *value = PyTuple_GET_ITEM(item, 1);
    }
    else if (PyList_CheckExact(item) && PyList_GET_SIZE(item) == 2) {
        *name = PyList_GET_ITEM(item, 0);
        *value = PyList_GET_ITEM(item, 1);
    }
    else
        return 0;
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

static PyObject *
carriers(PyObject *module, PyObject *args)
{
    PyObject *headers, *want, *needle;
    if (!PyArg_ParseTuple(args, "OO!O!:carriers", &headers, &PyBytes_Type, &want,
                          &PyBytes_Type, &needle))
        return NULL;
    PyObject *seq = PySequence_Fast(headers, "carriers() takes a header list");
    if (seq == NULL)
        return NULL;
    const char *want_at = PyBytes_AS_STRING(want), *needle_at = PyBytes_AS_STRING(needle);
    const Py_ssize_t want_len = PyBytes_GET_SIZE(want), needle_len = PyBytes_GET_SIZE(needle);
    PyObject *values = NULL, *cookies = NULL, *out = NULL;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name, *value, **into;
        if (!pair(items[i], &name, &value))
            continue;
        const Py_ssize_t len = PyBytes_GET_SIZE(name);
        const char *at = PyBytes_AS_STRING(name);
        if (len == want_len && memcmp(at, want_at, len) == 0)
            into = &values;
        else if (len == 6 && memcmp(at, "cookie", 6) == 0
                 && memmem(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), needle_at,
                           needle_len) != NULL)
            into = &cookies;
        else
            continue;
        if (*into == NULL && (*into = PyList_New(0)) == NULL)
            goto done;
        if (PyList_Append(*into, value) < 0)
            goto done;
    }
    if (values == NULL && cookies == NULL)
        out = Py_NewRef(Py_None);
    else {
        if ((values == NULL && (values = PyList_New(0)) == NULL)
            || (cookies == NULL && (cookies = PyList_New(0)) == NULL))
            goto done;
        out = PyTuple_Pack(2, values, cookies);
    }
done:
    Py_DECREF(seq);
    Py_XDECREF(values);
    Py_XDECREF(cookies);
    return out;
}

/* The SDK formats' fast mapping: segment_events() and posthog_events() map a whole
 * decoded batch to PlainEvents as ingest/formats/segment.py and posthog.py _map()
 * followed by ingest/fast.py convert() would, and answer None for a batch with any
 * event they leave to that declared path (tests/test_sdk_fast.py proves both). */

static struct {
    PyObject *track, *page, *screen, *identify, *group, *alias;
    PyObject *traits, *library, *userAgent, *format, *type, *user_id, *name,
        *group_id, *previous_id, *segment, *posthog, *properties, *distinct_id,
        *raw_user_agent, *token, *set, *set_once, *event, *uuid, *timestamp, *offset,
        *sent_at, *api_key, *properties_token;
} words;

static int
intern_words(void)
{
    if (words.track)
        return 0;
#define WORD(field, text) \
    if ((words.field = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    WORD(track, "track") WORD(page, "page") WORD(screen, "screen")
    WORD(identify, "identify") WORD(group, "group") WORD(alias, "alias")
    WORD(traits, "traits") WORD(library, "library") WORD(userAgent, "userAgent")
    WORD(format, "format") WORD(type, "type") WORD(user_id, "user_id")
    WORD(name, "name") WORD(group_id, "group_id") WORD(previous_id, "previous_id")
    WORD(segment, "segment") WORD(posthog, "posthog") WORD(properties, "properties")
    WORD(distinct_id, "distinct_id") WORD(raw_user_agent, "$raw_user_agent")
    WORD(token, "token") WORD(set, "$set") WORD(set_once, "$set_once")
    WORD(event, "event") WORD(uuid, "uuid") WORD(timestamp, "timestamp")
    WORD(offset, "offset") WORD(sent_at, "sent_at") WORD(api_key, "api_key")
    WORD(properties_token, "properties.token")
#undef WORD
    return 0;
}

/* What an SDK event becomes: lane.py PLAIN_TARGET. */
typedef struct {
    PyObject *cls; /* PlainEvent */
    PyObject *unset;
    PyObject *sdk_key;
    Py_ssize_t max_agent;
    Py_ssize_t lo[3], hi[3]; /* the lengths of event, visitor_id and event_id */
} Target;

static int
parse_target(PyObject *spec, Target *t)
{
    PyObject *bounds;
    if (!PyTuple_Check(spec)
        || !PyArg_ParseTuple(spec, "OOUnO!", &t->cls, &t->unset, &t->sdk_key,
                             &t->max_agent, &PyTuple_Type, &bounds)
        || !PyArg_ParseTuple(bounds, "nnnnnn", &t->lo[0], &t->hi[0], &t->lo[1],
                             &t->hi[1], &t->lo[2], &t->hi[2])) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "expected the target tuple");
        return -1;
    }
    return 0;
}

static int
text_within(PyObject *value, const Target *t, int which)
{
    if (!PyUnicode_CheckExact(value))
        return 0;
    Py_ssize_t len = PyUnicode_GET_LENGTH(value);
    return len >= t->lo[which] && len <= t->hi[which];
}

/* The event PlainEvent(...) msgspec.convert() makes of the mapped fields (NULL: the
 * key is absent; metadata a new dict): 1 with *out, 0 when convert would refuse
 * them, -1 on error. */
static int
plain_event(const Target *t, PyObject *event, PyObject *visitor, PyObject *event_id,
            PyObject *metadata, PyObject *agent, PyObject *timestamp,
            PyObject *sent_at, PyObject **out)
{
    if (event == NULL || !text_within(event, t, 0) || visitor == NULL
        || !text_within(visitor, t, 1))
        return 0;
    if (event_id == NULL)
        event_id = Py_None;
    else if (event_id != Py_None && !text_within(event_id, t, 2))
        return 0;
    if ((timestamp != NULL && !PyUnicode_CheckExact(timestamp))
        || (sent_at != NULL && !PyUnicode_CheckExact(sent_at))
        || (agent != NULL && !PyUnicode_CheckExact(agent)))
        return 0;
    PyObject *cut = NULL;
    if (agent != NULL && PyUnicode_GET_LENGTH(agent) > t->max_agent) {
        /* lane.py user_agent() */
        if ((cut = agent = PyUnicode_Substring(agent, 0, t->max_agent)) == NULL)
            return -1;
    }
    PyObject *args[8] = {
        event,
        visitor,
        event_id,
        t->unset, /* test_id */
        metadata,
        agent ? agent : t->unset,
        timestamp ? timestamp : t->unset,
        sent_at ? sent_at : t->unset,
    };
    *out = PyObject_Vectorcall(t->cls, args, 8, NULL);
    Py_XDECREF(cut);
    return *out == NULL ? -1 : 1;
}

/* d[key] borrowed, NULL when absent (or on error: check PyErr_Occurred()). */
#define GET(d, key) PyDict_GetItemWithError((d), (key))

/* None for a value that is absent (NULL) or None. */
#define PRESENT(v) ((v) != NULL && (v) != Py_None)

/* lane.py pick(): source's values, not null, under their $sdk names. */
static int
pick(PyObject *sdk, PyObject *source, PyObject *keys)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        PyObject *pair = PyTuple_GET_ITEM(keys, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "expected (name, key) pairs");
            return -1;
        }
        PyObject *value = GET(source, PyTuple_GET_ITEM(pair, 1));
        if (value == NULL && PyErr_Occurred())
            return -1;
        if (PRESENT(value) && PyDict_SetItem(sdk, PyTuple_GET_ITEM(pair, 0), value) < 0)
            return -1;
    }
    return 0;
}

/* The Message fields segment_events() reads, in this order. */
enum {
    M_TYPE, M_EVENT, M_ANONYMOUS, M_USER, M_MESSAGE_ID, M_TIMESTAMP, M_ORIGINAL,
    M_SENT_AT, M_PROPERTIES, M_TRAITS, M_CONTEXT, M_NAME, M_GROUP_ID, M_PREVIOUS_ID,
    M_FIELDS
};
static const char *const message_fields[M_FIELDS] = {
    "type", "event", "anonymousId", "userId", "messageId", "timestamp",
    "originalTimestamp", "sentAt", "properties", "traits", "context", "name",
    "groupId", "previousId",
};

typedef struct {
    PyTypeObject *message;
    Py_ssize_t at[M_FIELDS]; /* each field's offset in a Message */
    PyObject *from_page, *from_library;
    Target target;
} Segment;

/* Segment's `x or None`: the value when it is true, else NULL; -1 on error. */
static int
truthy(PyObject *value, PyObject **out)
{
    int true_ = PyObject_IsTrue(value);
    if (true_ < 0)
        return -1;
    *out = true_ ? value : NULL;
    return 0;
}

/* segment.py _map() for one call, then convert(): as plain_event(). */
static int
segment_one(const Segment *s, PyObject *m, PyObject *call, PyObject *sent_at,
            PyObject **out)
{
    if (Py_TYPE(m) != s->message)
        return 0;
    PyObject *f[M_FIELDS];
    for (int k = 0; k < M_FIELDS; k++)
        if ((f[k] = *(PyObject **)((char *)m + s->at[k])) == NULL)
            return 0;
    PyObject *kind = call != Py_None ? call : f[M_TYPE];
    if (!PyUnicode_CheckExact(kind))
        return 0;
    PyObject *const kinds[6] = {
        words.track, words.page, words.screen, words.identify, words.group, words.alias,
    };
    int k = 0;
    while (k < 6 && PyUnicode_Compare(kind, kinds[k]) != 0)
        k++;
    if (k == 6)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *context = PyDict_CheckExact(f[M_CONTEXT]) ? f[M_CONTEXT] : NULL;
    PyObject *anonymous, *user;
    if (truthy(f[M_ANONYMOUS], &anonymous) < 0 || truthy(f[M_USER], &user) < 0)
        return -1;
    PyObject *metadata = f[M_PROPERTIES];
    if (k == 3 || k == 4) { /* identify, group: their traits */
        metadata = f[M_TRAITS];
        if (metadata == Py_None && context != NULL) {
            /* RudderStack's, in context.traits */
            PyObject *traits = GET(context, words.traits);
            if (traits != NULL)
                metadata = traits;
            else if (PyErr_Occurred())
                return -1;
        }
    }
    else if (k == 5)
        metadata = Py_None;
    if (metadata == Py_None)
        metadata = PyDict_New();
    else if (PyDict_CheckExact(metadata))
        metadata = PyDict_Copy(metadata);
    else
        return 0;
    PyObject *sdk = metadata ? PyDict_New() : NULL;
    if (sdk == NULL)
        goto error;
    if (PyDict_SetItem(sdk, words.format, words.segment) < 0
        || PyDict_SetItem(sdk, words.type, kind) < 0
        || (user != NULL && PyDict_SetItem(sdk, words.user_id, user) < 0)
        || (f[M_NAME] != Py_None && PyDict_SetItem(sdk, words.name, f[M_NAME]) < 0)
        || (f[M_GROUP_ID] != Py_None
            && PyDict_SetItem(sdk, words.group_id, f[M_GROUP_ID]) < 0)
        || (f[M_PREVIOUS_ID] != Py_None
            && PyDict_SetItem(sdk, words.previous_id, f[M_PREVIOUS_ID]) < 0))
        goto error;
    PyObject *agent = NULL;
    if (context != NULL) {
        PyObject *page = GET(context, words.page);
        if (page == NULL && PyErr_Occurred())
            goto error;
        if (page != NULL && PyDict_CheckExact(page) && pick(sdk, page, s->from_page) < 0)
            goto error;
        PyObject *library = GET(context, words.library);
        if (library == NULL && PyErr_Occurred())
            goto error;
        if (library != NULL && PyDict_CheckExact(library)
            && pick(sdk, library, s->from_library) < 0)
            goto error;
        agent = GET(context, words.userAgent);
        if (agent == NULL && PyErr_Occurred())
            goto error;
    }
    if (PyDict_SetItem(metadata, s->target.sdk_key, sdk) < 0)
        goto error;
    Py_CLEAR(sdk);
    PyObject *name = k == 0 ? f[M_EVENT] : kind;
    PyObject *visitor = anonymous == NULL && user != NULL ? user : anonymous;
    PyObject *event_id = f[M_MESSAGE_ID] == s->target.unset ? NULL : f[M_MESSAGE_ID];
    PyObject *timestamp = f[M_TIMESTAMP];
    if (timestamp == s->target.unset || timestamp == Py_None)
        timestamp = f[M_ORIGINAL]; /* RudderStack's */
    PyObject *sent = f[M_SENT_AT] == s->target.unset ? sent_at : f[M_SENT_AT];
    int r = plain_event(&s->target, PRESENT(name) ? name : NULL, visitor, event_id,
                        metadata, PRESENT(agent) ? agent : NULL,
                        PRESENT(timestamp) ? timestamp : NULL,
                        PRESENT(sent) ? sent : NULL, out);
    Py_DECREF(metadata);
    return r;
error:
    Py_XDECREF(sdk);
    Py_XDECREF(metadata);
    return -1;
}

/* Each field's offset in `type`, a msgspec Struct with those fields as slots. */
static int
field_offsets(PyTypeObject *type, const char *const *names, int count, Py_ssize_t *at)
{
    for (int k = 0; k < count; k++) {
        PyObject *d = PyObject_GetAttrString((PyObject *)type, names[k]);
        if (d == NULL)
            return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            at[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s is not a slot", names[k]);
            return -1;
        }
    }
    return 0;
}

/* Each item through one(); None when one declines. */
typedef int (*map_one)(const void *spec, PyObject *item, PyObject *call,
                       PyObject *sent_at, PyObject **out);

static PyObject *
map_all(map_one one, const void *spec, PyObject *items, PyObject *call,
        PyObject *sent_at)
{
    Py_ssize_t count = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *event = NULL;
        Py_INCREF(item);
        int r = one(spec, item, call, sent_at, &event);
        Py_DECREF(item);
        if (r <= 0) {
            Py_DECREF(out);
            return r < 0 ? NULL : Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(out, i, event);
    }
    if (PyList_GET_SIZE(items) != count) { /* changed under us: not ours to say */
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static int
segment_map_one(const void *spec, PyObject *item, PyObject *call, PyObject *sent_at,
                PyObject **out)
{
    return segment_one((const Segment *)spec, item, call, sent_at, out);
}

PyDoc_STRVAR(segment_events_doc,
"segment_events(messages, call, sent_at, spec) -> list[PlainEvent] | None\n\n"
"A Segment batch's calls (segment.py Message) as our events, each as _map(message,\n"
"call, sent_at) and fast.convert() make it; None when any call is not of the common\n"
"shape, for the declared path to map (and word its refusals). spec: (Message,\n"
"_FROM_PAGE, _FROM_LIBRARY, lane.PLAIN_TARGET).");

static PyObject *
segment_events(PyObject *module, PyObject *args)
{
    PyObject *messages, *call, *sent_at, *spec, *target;
    Segment s;
    if (!PyArg_ParseTuple(args, "O!OOO!:segment_events", &PyList_Type, &messages, &call,
                          &sent_at, &PyTuple_Type, &spec)
        || !PyArg_ParseTuple(spec, "O!O!O!O!", &PyType_Type, &s.message, &PyTuple_Type,
                             &s.from_page, &PyTuple_Type, &s.from_library,
                             &PyTuple_Type, &target)
        || parse_target(target, &s.target) < 0
        || field_offsets(s.message, message_fields, M_FIELDS, s.at) < 0)
        return NULL;
    if (call != Py_None && !PyUnicode_CheckExact(call)) {
        PyErr_SetString(PyExc_TypeError, "call is a str or None");
        return NULL;
    }
    return map_all(segment_map_one, &s, messages, call, sent_at);
}

/* The keys posthog_one() reads: of an event, then of its properties, where the
 * $sdk keys (posthog.py _FROM_PROPERTIES) follow. */
enum {
    I_PROPERTIES, I_DISTINCT, I_SET, I_SET_ONCE, I_EVENT, I_UUID, I_TIMESTAMP,
    I_SENT_AT, I_OFFSET, I_API_KEY, I_TOKEN, I_FIELDS
};
enum { Q_DISTINCT, Q_AGENT, Q_TOKEN, Q_SET, Q_SET_ONCE, Q_PICKED };
#define MAX_PICKED 16

typedef struct {
    PyObject *word;
    Py_hash_t hash;
} Key;

typedef struct {
    PyObject *types;   /* posthog.py TYPES */
    PyObject *capture; /* the type of any other named event */
    PyObject *from_properties;
    Target target;
    Key item[I_FIELDS];
    Key properties[Q_PICKED + MAX_PICKED];
    int n_properties;
    PyObject *keys; /* the SDK keys found, as posthog.py PostHogLane.payload() lists them */
} PostHog;

static int
key_of(Key *key, PyObject *word)
{
    key->word = word;
    key->hash = PyObject_Hash(word);
    return key->hash == -1 ? -1 : 0;
}

/* The values of `d` under the keys `want` (NULL when absent), in one pass over d
 * rather than a lookup each. 0, or -1 when d has a key that is not text. */
static int
values_of(PyObject *d, const Key *want, int count, PyObject **out)
{
    for (int k = 0; k < count; k++)
        out[k] = NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return -1;
        Py_hash_t hash = PyObject_Hash(key);
        for (int k = 0; k < count; k++)
            if (hash == want[k].hash
                && (key == want[k].word || _PyUnicode_EQ(key, want[k].word))) {
                out[k] = value;
                break;
            }
    }
    return 0;
}

static int
add_key(PyObject *keys, PyObject *field, PyObject *value)
{
    PyObject *pair = PyTuple_Pack(2, field, value);
    int r = pair ? PyList_Append(keys, pair) : -1;
    Py_XDECREF(pair);
    return r;
}

/* posthog.py _map() for one event, then convert(): as plain_event(); the event's
 * SDK keys are appended to p->keys. */
static int
posthog_one(const void *spec, PyObject *item, PyObject *unused, PyObject *sent_at,
            PyObject **out)
{
    const PostHog *p = (const PostHog *)spec;
    PyObject *f[I_FIELDS], *q[Q_PICKED + MAX_PICKED];
    PyObject *metadata = NULL, *sdk = NULL, *visitor = NULL;
    if (!PyDict_CheckExact(item) || values_of(item, p->item, I_FIELDS, f) < 0)
        return 0;
    PyObject *properties = f[I_PROPERTIES];
    if (properties == Py_None)
        properties = NULL; /* as {} */
    if (properties != NULL
        && (!PyDict_CheckExact(properties)
            || values_of(properties, p->properties, p->n_properties, q) < 0))
        return 0;
    if (properties == NULL)
        for (int k = 0; k < p->n_properties; k++)
            q[k] = NULL;
    if ((f[I_API_KEY] != NULL && add_key(p->keys, words.api_key, f[I_API_KEY]) < 0)
        || (f[I_TOKEN] != NULL && add_key(p->keys, words.token, f[I_TOKEN]) < 0)
        || (q[Q_TOKEN] != NULL
            && add_key(p->keys, words.properties_token, q[Q_TOKEN]) < 0))
        return -1;
    PyObject *distinct = f[I_DISTINCT];
    if (!PRESENT(distinct) && q[Q_DISTINCT] != NULL)
        distinct = q[Q_DISTINCT];
    if (!PRESENT(f[I_TIMESTAMP]) && f[I_OFFSET] != NULL && PyLong_CheckExact(f[I_OFFSET]))
        return 0; /* older posthog-js's offset from now: left to _map() */
    metadata = properties != NULL ? PyDict_Copy(properties) : PyDict_New();
    if (metadata == NULL)
        return -1;
    /* The token may be METRICS_INGEST_TOKEN itself: never stored. */
    if (q[Q_TOKEN] != NULL && PyDict_DelItem(metadata, words.token) < 0)
        goto error;
    if ((f[I_SET] != NULL && q[Q_SET] == NULL
         && PyDict_SetItem(metadata, words.set, f[I_SET]) < 0)
        || (f[I_SET_ONCE] != NULL && q[Q_SET_ONCE] == NULL
            && PyDict_SetItem(metadata, words.set_once, f[I_SET_ONCE]) < 0))
        goto error;
    PyObject *name = f[I_EVENT];
    if ((sdk = PyDict_New()) == NULL
        || PyDict_SetItem(sdk, words.format, words.posthog) < 0)
        goto error;
    if (name != NULL && PyUnicode_Check(name)) {
        PyObject *type = PyDict_GetItemWithError(p->types, name);
        if (type == NULL && PyErr_Occurred())
            goto error;
        if (PyDict_SetItem(sdk, words.type, type ? type : p->capture) < 0)
            goto error;
    }
    for (int k = Q_PICKED; k < p->n_properties; k++) {
        PyObject *pair = PyTuple_GET_ITEM(p->from_properties, k - Q_PICKED);
        if (PRESENT(q[k]) && PyDict_SetItem(sdk, PyTuple_GET_ITEM(pair, 0), q[k]) < 0)
            goto error;
    }
    if (PyDict_SetItem(metadata, p->target.sdk_key, sdk) < 0)
        goto error;
    Py_CLEAR(sdk);
    if (PRESENT(distinct)) {
        /* Numbers are allowed; the stored id is text. */
        if (PyLong_CheckExact(distinct)) {
            if ((visitor = PyObject_Str(distinct)) == NULL)
                goto error;
        }
        else
            visitor = Py_NewRef(distinct);
    }
    PyObject *sent = f[I_SENT_AT] != NULL ? f[I_SENT_AT] : sent_at;
    PyObject *agent = q[Q_AGENT];
    int r = plain_event(&p->target, PRESENT(name) ? name : NULL, visitor,
                        PRESENT(f[I_UUID]) ? f[I_UUID] : NULL, metadata,
                        PRESENT(agent) ? agent : NULL,
                        PRESENT(f[I_TIMESTAMP]) ? f[I_TIMESTAMP] : NULL,
                        PRESENT(sent) ? sent : NULL, out);
    Py_DECREF(metadata);
    Py_XDECREF(visitor);
    return r;
error:
    Py_XDECREF(sdk);
    Py_XDECREF(metadata);
    Py_XDECREF(visitor);
    return -1;
}

PyDoc_STRVAR(posthog_events_doc,
"posthog_events(items, sent_at, spec) -> (list[PlainEvent], keys) | None\n\n"
"A PostHog request's events as our events, each as _map(item, sent_at, now) and\n"
"fast.convert() make it, and the SDK keys they hold as PostHogLane.payload() lists\n"
"them; None when any is not of the common shape (or needs `now`: an offset), for\n"
"the declared path. spec: (TYPES, \"capture\", _FROM_PROPERTIES, lane.PLAIN_TARGET).");

static PyObject *
posthog_events(PyObject *module, PyObject *args)
{
    PyObject *items, *sent_at, *spec, *target;
    PostHog p;
    if (!PyArg_ParseTuple(args, "O!OO!:posthog_events", &PyList_Type, &items, &sent_at,
                          &PyTuple_Type, &spec)
        || !PyArg_ParseTuple(spec, "O!UO!O!", &PyDict_Type, &p.types, &p.capture,
                             &PyTuple_Type, &p.from_properties, &PyTuple_Type, &target)
        || parse_target(target, &p.target) < 0)
        return NULL;
    Py_ssize_t picked = PyTuple_GET_SIZE(p.from_properties);
    if (picked > MAX_PICKED) {
        PyErr_SetString(PyExc_ValueError, "too many $sdk keys");
        return NULL;
    }
    PyObject *const item_words[I_FIELDS] = {
        words.properties, words.distinct_id, words.set, words.set_once, words.event,
        words.uuid, words.timestamp, words.sent_at, words.offset, words.api_key,
        words.token,
    };
    PyObject *const property_words[Q_PICKED] = {
        words.distinct_id, words.raw_user_agent, words.token, words.set, words.set_once,
    };
    for (int k = 0; k < I_FIELDS; k++)
        if (key_of(&p.item[k], item_words[k]) < 0)
            return NULL;
    for (int k = 0; k < Q_PICKED; k++)
        if (key_of(&p.properties[k], property_words[k]) < 0)
            return NULL;
    for (Py_ssize_t k = 0; k < picked; k++) {
        PyObject *pair = PyTuple_GET_ITEM(p.from_properties, k);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
            || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "expected ($sdk name, key) pairs");
            return NULL;
        }
        if (key_of(&p.properties[Q_PICKED + k], PyTuple_GET_ITEM(pair, 1)) < 0)
            return NULL;
    }
    p.n_properties = Q_PICKED + (int)picked;
    if ((p.keys = PyList_New(0)) == NULL)
        return NULL;
    PyObject *events = map_all(posthog_one, &p, items, Py_None, sent_at);
    if (events == NULL || events == Py_None) {
        Py_DECREF(p.keys);
        return events;
    }
    return Py_BuildValue("(NN)", events, p.keys);
}

static PyMethodDef methods[] = {
    {"index", index_lines, METH_O, index_doc},
    {"columns", columns, METH_VARARGS, columns_doc},
    {"long_digits", long_digits, METH_O, long_digits_doc},
    {"lines", format_lines, METH_VARARGS, lines_doc},
    {"bodies", bodies, METH_O, bodies_doc},
    {"rows", rows, METH_VARARGS, rows_doc},
    {"event_ids", event_ids, METH_VARARGS, event_ids_doc},
    {"carriers", carriers, METH_VARARGS, carriers_doc},
    {"segment_events", segment_events, METH_VARARGS, segment_events_doc},
    {"posthog_events", posthog_events, METH_VARARGS, posthog_events_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    /* `keys` holds interned strings in a static: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "metrics_service._native._speedups",
    .m_doc = "Per-line work in C for replay and ingest (see _native/__init__.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (!keys.seq) {
        keys.seq = PyUnicode_InternFromString("seq");
        keys.timestamp = PyUnicode_InternFromString("timestamp");
        keys.event = PyUnicode_InternFromString("event");
        keys.event_id = PyUnicode_InternFromString("event_id");
        if (!keys.seq || !keys.timestamp || !keys.event || !keys.event_id)
            return NULL;
    }
    if (intern_words() < 0)
        return NULL;
    return PyModuleDef_Init(&module);
}
