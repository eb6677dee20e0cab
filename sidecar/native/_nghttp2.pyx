# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A thin sans-IO binding of libnghttp2: bytes in, one list of events out per read.

nghttp2 calls back once per frame and once per header; those callbacks are C functions here
that only append to a Python list, so the proxy's Python code runs once per ``receive()``
call, not once per frame or header. Output is pulled with ``data_to_send()``.

Flow control is manual (NGHTTP2_OPT_NO_AUTO_WINDOW_UPDATE): received DATA is acknowledged
only when the caller says the bytes were handed on (``consume``), so a slow reader on the
other side stalls the sender instead of growing a buffer. Outgoing DATA is queued per stream
and pulled by nghttp2 only as the peer's windows allow; ``send_window`` says how much more
may be queued so the queue stays bounded by the peer's window.

Events are the caller's objects when it registered constructors with ``set_events`` (the
proxy's codec does: no Python runs per frame to convert them); otherwise tuples (the first
item is the kind):
    (EV_HEADERS, stream_id, headers, end_stream, method, scheme, authority, path, status)
        a request, response (1xx too) or trailers; ``headers`` holds the regular fields as
        (name, value) bytes pairs, the pseudo-headers are split out (``b""`` / status -1
        when absent: trailers have none)
    (EV_DATA, stream_id, data, flow_len)
    (EV_END, stream_id)                           the peer ended the stream (END_STREAM)
    (EV_RESET, stream_id, error_code)             RST_STREAM received
    (EV_GOAWAY, last_stream_id, error_code)
    (EV_WINDOW, stream_id)                        more send window (0: connection or SETTINGS)
    (EV_CLOSED, stream_id, error_code)            nghttp2 closed the stream (both sides done)
"""

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "sys/types.h":
    ctypedef long ssize_t

cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat
    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code
    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_rst_stream rst_stream
        nghttp2_goaway goaway
    ctypedef union nghttp2_data_source:
        int fd
        void *ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
        uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value
    ctypedef struct nghttp2_info:
        int version_num
        const char *version_str

    int NGHTTP2_DATA = 0
    int NGHTTP2_HEADERS = 1
    int NGHTTP2_RST_STREAM = 3
    int NGHTTP2_SETTINGS = 4
    int NGHTTP2_GOAWAY = 7
    int NGHTTP2_WINDOW_UPDATE = 8
    int NGHTTP2_FLAG_NONE = 0
    int NGHTTP2_FLAG_END_STREAM = 1
    int NGHTTP2_FLAG_ACK = 1
    int NGHTTP2_DATA_FLAG_EOF = 1
    int NGHTTP2_DATA_FLAG_NO_END_STREAM = 2
    int NGHTTP2_ERR_DEFERRED = -508
    int NGHTTP2_ERR_CALLBACK_FAILURE = -902
    int NGHTTP2_SETTINGS_HEADER_TABLE_SIZE = 1
    int NGHTTP2_SETTINGS_ENABLE_PUSH = 2
    int NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS = 3
    int NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE = 4
    int NGHTTP2_SETTINGS_MAX_FRAME_SIZE = 5
    int NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE = 6
    int NGHTTP2_REMOTE_MAX_CONCURRENT_STREAMS "NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS"

    ctypedef int (*on_frame_recv_cb)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*on_data_chunk_recv_cb)(nghttp2_session *, uint8_t, int32_t, const uint8_t *,
                                          size_t, void *)
    ctypedef int (*on_frame_send_cb)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*on_stream_close_cb)(nghttp2_session *, int32_t, uint32_t, void *)
    ctypedef int (*on_begin_headers_cb)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*on_header_cb)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                 const uint8_t *, size_t, uint8_t, void *)

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
                                                              on_frame_recv_cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                                   on_data_chunk_recv_cb)
    void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks *,
                                                              on_frame_send_cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                                on_stream_close_cb)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                                 on_begin_headers_cb)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *,
                                                          on_header_cb)
    int nghttp2_option_new(nghttp2_option **)
    void nghttp2_option_del(nghttp2_option *)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int)
    void nghttp2_option_set_no_closed_streams(nghttp2_option *, int)
    void nghttp2_option_set_max_outbound_ack(nghttp2_option *, size_t)
    void nghttp2_option_set_max_settings(nghttp2_option *, size_t)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *, uint64_t, uint64_t)
    void nghttp2_option_set_max_continuations(nghttp2_option *, size_t)
    void nghttp2_option_set_max_send_header_block_length(nghttp2_option *, size_t)
    void nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(nghttp2_option *, int)
    int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *,
                                    void *, const nghttp2_option *)
    int nghttp2_session_client_new2(nghttp2_session **, const nghttp2_session_callbacks *,
                                    void *, const nghttp2_option *)
    void nghttp2_session_del(nghttp2_session *)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t)
    ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **)
    int nghttp2_session_want_read(nghttp2_session *)
    int nghttp2_session_want_write(nghttp2_session *)
    int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t)
    int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t)
    int32_t nghttp2_submit_request(nghttp2_session *, const void *, const nghttp2_nv *, size_t,
                                   const nghttp2_data_provider *, void *)
    int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t,
                                const nghttp2_data_provider *)
    int nghttp2_submit_headers(nghttp2_session *, uint8_t, int32_t, const void *,
                               const nghttp2_nv *, size_t, void *)
    int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t)
    int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t)
    int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *,
                              size_t)
    int nghttp2_submit_shutdown_notice(nghttp2_session *)
    int nghttp2_session_resume_data(nghttp2_session *, int32_t)
    int nghttp2_session_consume(nghttp2_session *, int32_t, size_t)
    int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *, int32_t)
    int32_t nghttp2_session_get_remote_window_size(nghttp2_session *)
    uint32_t nghttp2_session_get_remote_settings(nghttp2_session *, int)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *)
    int nghttp2_session_check_request_allowed(nghttp2_session *)
    void *nghttp2_session_find_stream(nghttp2_session *, int32_t)
    const char *nghttp2_strerror(int)
    nghttp2_info *nghttp2_version(int)

EV_HEADERS = 1
EV_DATA = 2
EV_END = 3
EV_RESET = 4
EV_GOAWAY = 5
EV_WINDOW = 6
EV_CLOSED = 7


def library_version():
    """The linked libnghttp2's version string."""
    return nghttp2_version(0).version_str.decode()


class Nghttp2Error(Exception):
    """nghttp2 refused the input (protocol error, flood): the connection is done."""


class StreamGoneError(Nghttp2Error):
    """The stream was reset or closed (by the peer, or by us): nothing more can go on it."""


cdef class _In:
    """A header block being received on one stream."""

    cdef list headers
    cdef bytes method, scheme, authority, path
    cdef int status
    cdef Py_ssize_t cookie  # index of the cookie field in headers, -1: none yet

    def __cinit__(self):
        self.headers = []
        self.cookie = -1
        self.method = self.scheme = self.authority = self.path = b""
        self.status = -1


cdef class _Out:
    """DATA queued for one stream, pulled by nghttp2 as the peer's window allows."""

    cdef list chunks
    cdef Py_ssize_t offset     # into chunks[0]
    cdef Py_ssize_t queued     # bytes not yet pulled
    cdef bint ended
    cdef object trailers
    cdef bint deferred

    def __cinit__(self):
        self.chunks = []
        self.offset = 0
        self.queued = 0
        self.ended = False
        self.trailers = None
        self.deferred = False


cdef class Session:
    """One HTTP/2 connection's state machine (client or server side)."""

    cdef nghttp2_session *session
    cdef list events
    cdef dict headers      # stream id -> header list being received
    cdef dict out          # stream id -> _Out
    cdef public bint client
    cdef object error      # an exception raised inside a callback, re-raised by receive()
    cdef public long goaway_error_sent  # error code of a GOAWAY that went out, -1: none
    cdef public long resets_received    # RST_STREAM frames received (the owner may zero it)
    # Event constructors (``set_events``): when set, the callbacks build the caller's event
    # objects themselves, so the caller runs no Python per frame to convert tuples.
    cdef object mk_request, mk_response, mk_trailers, mk_data, mk_end, mk_reset, mk_goaway
    cdef object mk_window

    def __cinit__(self, bint client, uint32_t initial_window=65535,
                  uint32_t max_concurrent_streams=128, int32_t connection_window=65535,
                  uint32_t max_header_list_size=0, size_t max_continuations=8,
                  uint64_t reset_burst=1000, uint64_t reset_rate=33,
                  size_t max_outbound_ack=1000):
        cdef nghttp2_session_callbacks *cbs
        cdef nghttp2_option *opt
        cdef nghttp2_settings_entry iv[4]
        cdef int n = 0
        self.session = NULL
        self.events = []
        self.headers = {}
        self.out = {}
        self.client = client
        self.error = None
        self.goaway_error_sent = -1
        self.resets_received = 0
        self.mk_request = None
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _on_stream_close)
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, _on_frame_send)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(cbs, _on_header)
        if nghttp2_option_new(&opt) != 0:
            nghttp2_session_callbacks_del(cbs)
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_no_closed_streams(opt, 1)
        # Flood protections: control-frame ACK backlog, SETTINGS size, CONTINUATION count,
        # and (server side) the rapid-reset token bucket (CVE-2023-44487).
        nghttp2_option_set_max_outbound_ack(opt, max_outbound_ack)
        nghttp2_option_set_max_settings(opt, 32)
        nghttp2_option_set_max_continuations(opt, max_continuations)
        nghttp2_option_set_stream_reset_rate_limit(opt, reset_burst, reset_rate)
        if client:
            rv = nghttp2_session_client_new2(&self.session, cbs, <void *>self, opt)
        else:
            rv = nghttp2_session_server_new2(&self.session, cbs, <void *>self, opt)
        nghttp2_option_del(opt)
        nghttp2_session_callbacks_del(cbs)
        if rv != 0:
            raise MemoryError(nghttp2_strerror(rv).decode())
        iv[n].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[n].value = initial_window
        n += 1
        iv[n].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[n].value = max_concurrent_streams
        n += 1
        if client:
            iv[n].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            iv[n].value = 0
            n += 1
        if max_header_list_size:
            iv[n].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
            iv[n].value = max_header_list_size
            n += 1
        _check(nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, n))
        if connection_window > 65535:
            _check(nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                                         connection_window))

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    def set_events(self, request, response, trailers, data, end, reset, goaway, window):
        """Record events as objects made by these callables (same arguments as the tuples'
        fields: request(sid, method, scheme, authority, path, headers, end_stream),
        response(sid, status, headers, end_stream), trailers(sid, headers), data(sid, data,
        flow), end(sid), reset(sid, code), goaway(last_sid, code), window(sid)); stream
        closes are not reported then."""
        self.mk_request, self.mk_response, self.mk_trailers = request, response, trailers
        self.mk_data, self.mk_end, self.mk_reset = data, end, reset
        self.mk_goaway, self.mk_window = goaway, window

    # -- input --------------------------------------------------------------------------
    def receive(self, bytes data):
        """Feed bytes from the peer; returns the events they produced (may be empty)."""
        cdef ssize_t rv = nghttp2_session_mem_recv(
            self.session, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        events = self.events
        self.events = []
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if rv < 0:
            raise Nghttp2Error(nghttp2_strerror(<int>rv).decode())
        return events

    def pending_events(self):
        """Events recorded while sending (stream closes after our END_STREAM)."""
        events = self.events
        self.events = []
        return events

    def consume(self, int32_t stream_id, size_t n):
        """``n`` received DATA bytes of ``stream_id`` were handed on: open the windows again."""
        if n:
            nghttp2_session_consume(self.session, stream_id, n)

    # -- output -------------------------------------------------------------------------
    def data_to_send(self):
        """Every byte nghttp2 wants to write now (frames serialised as windows allow)."""
        cdef const uint8_t *buf
        cdef ssize_t n
        parts = None
        first = b""
        while True:
            n = nghttp2_session_mem_send(self.session, &buf)
            if n < 0:
                if self.error is not None:
                    err, self.error = self.error, None
                    raise err
                raise Nghttp2Error(nghttp2_strerror(<int>n).decode())
            if n == 0:
                break
            chunk = PyBytes_FromStringAndSize(<const char *>buf, n)
            if parts is None:
                if not first:
                    first = chunk
                    continue
                parts = [first]
            parts.append(chunk)
        if parts is None:
            return first
        return b"".join(parts)

    def send_request(self, list headers, bint end_stream):
        """Open a stream with these headers; returns its id. DATA follows with send_data."""
        cdef nghttp2_data_provider prd
        cdef int32_t sid
        nva, keep = _nv(headers)
        try:
            if end_stream:
                sid = nghttp2_submit_request(self.session, NULL, _nv_ptr(nva), len(headers),
                                             NULL, NULL)
            else:
                prd.source.ptr = NULL
                prd.read_callback = _read_data
                sid = nghttp2_submit_request(self.session, NULL, _nv_ptr(nva), len(headers),
                                             &prd, NULL)
        finally:
            del keep
        _check(sid)
        if not end_stream:
            self.out[sid] = _Out()
        return sid

    def send_response(self, int32_t stream_id, list headers, bint end_stream):
        """Final response headers; DATA follows with send_data unless end_stream."""
        cdef nghttp2_data_provider prd
        self._live(stream_id)
        nva, keep = _nv(headers)
        if end_stream:
            rv = nghttp2_submit_response(self.session, stream_id, _nv_ptr(nva), len(headers), NULL)
        else:
            prd.source.ptr = NULL
            prd.read_callback = _read_data
            self.out[stream_id] = _Out()
            rv = nghttp2_submit_response(self.session, stream_id, _nv_ptr(nva), len(headers), &prd)
        _check(rv)

    def send_informational(self, int32_t stream_id, list headers):
        """A 1xx response (no END_STREAM)."""
        self._live(stream_id)
        nva, keep = _nv(headers)
        _check(nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, stream_id, NULL,
                                      _nv_ptr(nva), len(headers), NULL))

    def send_data(self, int32_t stream_id, bytes data):
        """Queue DATA; keep what is queued within ``send_window`` to stay bounded."""
        cdef _Out o = self.out.get(stream_id)
        if o is None or o.ended:
            raise StreamGoneError(f"stream {stream_id} takes no more DATA")
        if data:
            o.chunks.append(data)
            o.queued += len(data)
            self._resume(stream_id, o)

    def end_stream(self, int32_t stream_id, list trailers=None):
        """No more DATA on ``stream_id``; trailers (if any) end it instead of an empty DATA."""
        cdef _Out o = self.out.get(stream_id)
        if o is None:
            raise StreamGoneError(f"stream {stream_id} has no body being sent")
        o.ended = True
        o.trailers = trailers or None
        self._resume(stream_id, o)

    cdef _live(self, int32_t stream_id):
        if nghttp2_session_find_stream(self.session, stream_id) == NULL:
            raise StreamGoneError(f"stream {stream_id} is closed")

    cdef _resume(self, int32_t stream_id, _Out o):
        if o.deferred:
            o.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)

    def send_window(self, int32_t stream_id):
        """How many more DATA bytes may be queued on ``stream_id`` now."""
        cdef _Out o = self.out.get(stream_id)
        cdef int32_t w = nghttp2_session_get_stream_remote_window_size(self.session, stream_id)
        cdef int32_t c = nghttp2_session_get_remote_window_size(self.session)
        if w < 0:
            if o is None:
                raise StreamGoneError(f"stream {stream_id} is closed")
            # A request submitted but not serialised yet has no stream in nghttp2 so far: it
            # opens with the peer's initial window.
            w = nghttp2_session_get_remote_settings(self.session,
                                                    NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE)
        if c < w:
            w = c
        if o is not None:
            w -= o.queued
        return w if w > 0 else 0

    def queued(self, int32_t stream_id):
        cdef _Out o = self.out.get(stream_id)
        return 0 if o is None else o.queued

    def reset(self, int32_t stream_id, uint32_t code):
        self.out.pop(stream_id, None)
        nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, code)

    def goaway(self, uint32_t code=0, last_stream_id=None):
        """GOAWAY; with the default last stream id, streams opened so far may finish."""
        cdef int32_t last = (nghttp2_session_get_last_proc_stream_id(self.session)
                             if last_stream_id is None else last_stream_id)
        _check(nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, last, code, NULL, 0))

    # -- state --------------------------------------------------------------------------
    @property
    def remote_max_concurrent_streams(self):
        return nghttp2_session_get_remote_settings(self.session,
                                                   NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    @property
    def last_stream_id(self):
        return nghttp2_session_get_last_proc_stream_id(self.session)

    def want_read(self):
        return bool(nghttp2_session_want_read(self.session))

    def want_write(self):
        return bool(nghttp2_session_want_write(self.session))

    def request_allowed(self):
        return nghttp2_session_check_request_allowed(self.session) != 0


cdef inline int _check(long rv) except -1:
    if rv < 0:
        raise Nghttp2Error(nghttp2_strerror(<int>rv).decode())
    return 0


cdef object _nv(list headers):
    """An nghttp2_nv array (as bytes) pointing into ``headers``' bytes, which must outlive it."""
    cdef Py_ssize_t n = len(headers)
    cdef bytes buf = PyBytes_FromStringAndSize(NULL, n * sizeof(nghttp2_nv))
    cdef nghttp2_nv *nv = <nghttp2_nv *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t i
    cdef bytes name, value
    for i in range(n):
        name, value = headers[i]
        nv[i].name = <uint8_t *>PyBytes_AS_STRING(name)
        nv[i].namelen = PyBytes_GET_SIZE(name)
        nv[i].value = <uint8_t *>PyBytes_AS_STRING(value)
        nv[i].valuelen = PyBytes_GET_SIZE(value)
        nv[i].flags = 0  # nghttp2 copies name and value during submit
    return buf, headers


cdef inline const nghttp2_nv *_nv_ptr(bytes buf):
    return <const nghttp2_nv *>PyBytes_AS_STRING(buf)


# -- callbacks (C; they only record) -------------------------------------------------------

cdef int _on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame,
                           void *user_data) noexcept:
    cdef Session self = <Session>user_data
    try:
        self.headers[frame.hd.stream_id] = _In()
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef _In h
    cdef bytes v
    cdef size_t i
    cdef int status = 0
    try:
        h = <_In>self.headers[frame.hd.stream_id]
        v = PyBytes_FromStringAndSize(<const char *>value, valuelen)
        if namelen and name[0] == 58:  # ':' (nghttp2 has validated the pseudo-header)
            if namelen == 7 and name[1] == 109:  # :method
                h.method = v
            elif namelen == 5 and name[1] == 112:  # :path
                h.path = v
            elif namelen == 10 and name[1] == 97:  # :authority
                h.authority = v
            elif namelen == 7 and name[1] == 115 and name[2] == 99:  # :scheme
                h.scheme = v
            elif namelen == 7 and name[1] == 115:  # :status (three digits, validated)
                for i in range(valuelen):
                    status = status * 10 + (value[i] - 48)
                h.status = status
            else:  # :protocol (extended CONNECT) and the like stay visible
                h.headers.append((PyBytes_FromStringAndSize(<const char *>name, namelen), v))
        elif namelen == 6 and memcmp(name, b"cookie", 6) == 0:
            # Cookie crumbs are joined into one field (RFC 9113 8.2.3), as h2 does, so an
            # HTTP/1.1 hop and the apps see one Cookie header.
            if h.cookie < 0:
                h.cookie = len(h.headers)
                h.headers.append((b"cookie", v))
            else:
                h.headers[h.cookie] = (b"cookie", h.headers[h.cookie][1] + b"; " + v)
        else:
            h.headers.append((PyBytes_FromStringAndSize(<const char *>name, namelen), v))
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef int32_t sid = frame.hd.stream_id
    cdef uint8_t t = frame.hd.type
    cdef _In h
    cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    try:
        if self.mk_request is not None:
            return _record(self, frame, t, sid, end)
        if t == NGHTTP2_HEADERS:
            h = <_In>self.headers.pop(sid)
            self.events.append((EV_HEADERS, sid, h.headers, end,
                                h.method, h.scheme, h.authority, h.path, h.status))
        elif t == NGHTTP2_DATA:
            if end:
                self.events.append((EV_END, sid))
        elif t == NGHTTP2_RST_STREAM:
            self.out.pop(sid, None)
            self.resets_received += 1
            self.events.append((EV_RESET, sid, frame.rst_stream.error_code))
        elif t == NGHTTP2_GOAWAY:
            self.events.append((EV_GOAWAY, frame.goaway.last_stream_id, frame.goaway.error_code))
        elif t == NGHTTP2_WINDOW_UPDATE:
            self.events.append((EV_WINDOW, sid))
        elif t == NGHTTP2_SETTINGS and not (frame.hd.flags & NGHTTP2_FLAG_ACK):
            self.events.append((EV_WINDOW, 0))  # INITIAL_WINDOW_SIZE may have grown
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _record(Session self, const nghttp2_frame *frame, uint8_t t, int32_t sid,
                 bint end) except -1:
    """``_on_frame_recv`` with event constructors: the caller's objects, built here."""
    cdef _In h
    if t == NGHTTP2_HEADERS:
        h = <_In>self.headers.pop(sid)
        if self.client:
            if h.status >= 0:
                self.events.append(self.mk_response(sid, h.status, h.headers, end))
            else:
                self.events.append(self.mk_trailers(sid, h.headers))
        elif h.method:
            self.events.append(self.mk_request(sid, h.method, h.scheme, h.authority, h.path,
                                               h.headers, end))
        else:
            self.events.append(self.mk_trailers(sid, h.headers))
    elif t == NGHTTP2_DATA:
        if end:
            self.events.append(self.mk_end(sid))
    elif t == NGHTTP2_WINDOW_UPDATE:
        self.events.append(self.mk_window(sid))
    elif t == NGHTTP2_RST_STREAM:
        self.out.pop(sid, None)
        self.resets_received += 1
        self.events.append(self.mk_reset(sid, frame.rst_stream.error_code))
    elif t == NGHTTP2_GOAWAY:
        self.events.append(self.mk_goaway(frame.goaway.last_stream_id, frame.goaway.error_code))
    elif t == NGHTTP2_SETTINGS and not (frame.hd.flags & NGHTTP2_FLAG_ACK):
        self.events.append(self.mk_window(0))  # INITIAL_WINDOW_SIZE may have grown
    return 0


cdef int _on_frame_send(nghttp2_session *s, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    # A GOAWAY with an error that nghttp2 queued by itself (flood protection) must end the
    # connection; the codec sees it here, as the frame goes out.
    if frame.hd.type == NGHTTP2_GOAWAY:
        (<Session>user_data).goaway_error_sent = frame.goaway.error_code
    return 0


cdef int _on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id,
                        const uint8_t *data, size_t length, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    try:
        chunk = PyBytes_FromStringAndSize(<const char *>data, length)
        if self.mk_data is not None:
            self.events.append(self.mk_data(stream_id, chunk, length))
        else:
            self.events.append((EV_DATA, stream_id, chunk, length))
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef Session self = <Session>user_data
    try:
        self.out.pop(stream_id, None)
        self.headers.pop(stream_id, None)
        if self.mk_request is None:
            self.events.append((EV_CLOSED, stream_id, error_code))
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_data(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source,
                        void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef _Out o
    cdef size_t copied = 0
    cdef size_t n
    cdef bytes chunk
    cdef Py_ssize_t avail
    try:
        o = self.out.get(stream_id)
        if o is None:
            return NGHTTP2_ERR_CALLBACK_FAILURE
        while copied < length and o.chunks:
            chunk = <bytes>o.chunks[0]
            avail = PyBytes_GET_SIZE(chunk) - o.offset
            n = length - copied
            if <size_t>avail <= n:
                memcpy(buf + copied, PyBytes_AS_STRING(chunk) + o.offset, avail)
                copied += avail
                o.chunks.pop(0)
                o.offset = 0
            else:
                memcpy(buf + copied, PyBytes_AS_STRING(chunk) + o.offset, n)
                copied += n
                o.offset += n
        o.queued -= copied
        if not o.chunks and o.ended:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if o.trailers is not None:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                trailers = o.trailers
                nva, keep = _nv(trailers)
                nghttp2_submit_trailer(s, stream_id, _nv_ptr(nva), len(trailers))
            del self.out[stream_id]
            return copied
        if copied == 0:
            o.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return copied
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
