# Types for the Cython build of decoders.py into ble._decoders_c (see ble/compiled.py); the .py stays plain Python.
import cython

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, length=Py_ssize_t, end=Py_ssize_t, t=cython.int,
               company=cython.int, u16=cython.int, j=Py_ssize_t, v=cython.int, ios=cython.bint,
               phone=cython.bint)
cpdef object decode_uncached(bytes data)
