# Types for the Cython build of aggregator.py into ble._aggregator_c (see ble/compiled.py); the .py stays plain Python.
# The fast path of feed(): times as C doubles, the open sighting as a C struct.
import cython

cdef class _Track:
    cdef public object kind, ident, tx_power, aem, clock, slot_start
    cdef public list hist
    cdef public double first, last, slot_end
    cdef public Py_ssize_t no_rssi

@cython.locals(ts=cython.double, lo=cython.double, hi=cython.double, end=cython.double,
               due=cython.double, slow=Py_ssize_t, st=list, tr=_Track, hist=list)
cpdef Py_ssize_t _feed(object reports, dict fast, dict fast_alt, object observe, object resolve,
                       object watcher, double refresh, object ck) except -1

