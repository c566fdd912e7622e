# Types for the Cython build of aggregator.py into ble._aggregator_c (see ble/compiled.py); the .py stays plain Python.
# The fast path of feed(): times as C doubles, the open sighting as a C struct, the live
# phone count (the watcher the daemon gives it) as a C class called directly.
import cython

cdef class _Track:
    cdef public object kind, ident, tx_power, aem, clock, slot_start
    cdef public list hist
    cdef public double first, last, slot_end
    cdef public Py_ssize_t no_rssi

cdef class LivePhones:
    cdef public double window_s, address_cache_s, _cache_until
    cdef public Py_ssize_t max_entries, untracked
    cdef public bytes _key
    cdef public object _seen
    cdef public dict _digests
    cpdef void seen(self, double ts, str address, object kind)
    cpdef entry(self, str address)
    @cython.locals(cutoff=cython.double, first=list)
    cpdef void _expire(self, double now)

@cython.locals(ts=cython.double, lo=cython.double, hi=cython.double, end=cython.double,
               due=cython.double, slow=Py_ssize_t, ri=cython.long, entry=list, st=list, tr=_Track, hist=list)
cpdef Py_ssize_t _feed(object reports, dict fast, dict fast_alt, object observe, object resolve,
                       object watcher, LivePhones live, double refresh,
                       object ck) except -1

