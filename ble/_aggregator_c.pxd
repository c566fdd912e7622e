# Types for the Cython build of aggregator.py into ble._aggregator_c (see ble/compiled.py); the .py stays plain Python.
# The fast path of feed(): times as C doubles, the address's entry, its open sighting (with
# its histogram as a C array) and the live phone count (the watcher the daemon gives it) as C
# objects, called and written directly.
import cython

cdef class _Track:
    cdef public object kind, ident, tx_power, aem, clock, slot_start
    cdef unsigned int hist[256]  # not public: Python code must not see a copy
    cdef public double first, last, slot_end
    cdef public Py_ssize_t no_rssi
    @cython.locals(h=cython.p_uint, n=Py_ssize_t, i=Py_ssize_t, half=Py_ssize_t,
                   acc=Py_ssize_t, top=cython.long, rssi=cython.long, c=Py_ssize_t)
    cpdef tuple stats(self)

cdef class _Live:
    cdef public double last, put
    cdef public Py_ssize_t rank
    cdef public object key
    cdef public bint alive

cdef class _Fast:
    cdef public object data, kind
    cdef public double lo, hi, end
    cdef public _Track track
    cdef public _Live live
    cdef public _Fast alt

cdef class _Addr:
    cdef public object digest
    cdef public Py_ssize_t rank
    cdef public _Track track

cdef class _Window:
    cdef public object start
    cdef public double end
    cdef public unsigned long long k0, k1
    cdef public dict devices, ids
    cdef public bytearray refused

cdef class LivePhones:
    cdef public double window_s, address_cache_s, _cache_until
    cdef public Py_ssize_t max_entries, untracked
    cdef public unsigned long long _k0, _k1
    cdef public object _seen
    cdef public dict _digests
    @cython.locals(entry=_Live, old=_Live, rank=Py_ssize_t)
    cpdef void seen(self, double ts, str address, object kind)
    cpdef entry(self, str address)
    @cython.locals(cutoff=cython.double, first=_Live)
    cpdef void _expire(self, double now)

cdef class WindowAggregator:
    cdef public object thresholds, clock, resolve, _watcher, _fast_clock, count_window_s
    cdef public LivePhones _live
    cdef public _Window _win
    cdef public Py_ssize_t max_ids, adverts, late
    cdef public double watch_refresh_s
    cdef public dict _slot_len, _tracks, _recent, _fast, _fast_adv, _fast_adv_alt
    cdef public dict _flushed
    cdef public list _ready, _counts
    @cython.locals(win=_Window, st=_Addr, tr=_Track, live=LivePhones, rank=Py_ssize_t,
                   lo=cython.double, hi=cython.double, end=cython.double, fe=_Fast, prev=_Fast)
    cpdef void _observe(self, double ts, str address, object rssi, object kind, bytes ident,
                        bytes aem, object tx, object clock, bytes data=*)
    @cython.locals(st=_Addr)
    cpdef _Addr _new_addr(self, str address, _Window win)

@cython.locals(ts=cython.double, hi=cython.double, due=cython.double, slow=Py_ssize_t,
               ri=cython.long, entry=_Live, st=_Fast, tr=_Track, fast=dict,
               live=LivePhones, refresh=cython.double)
cpdef Py_ssize_t _feed(object reports, WindowAggregator agg, object ck) except -1

cdef unsigned long long _M64, _IV0, _IV1, _IV2, _IV3

@cython.locals(v0=cython.ulonglong, v1=cython.ulonglong, v2=cython.ulonglong,
               v3=cython.ulonglong, m=cython.ulonglong, b=cython.ulonglong, n=Py_ssize_t,
               full=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t, rounds=cython.int)
cpdef unsigned long long _siphash(unsigned long long k0, unsigned long long k1,
                                  bytes data) except? 0
