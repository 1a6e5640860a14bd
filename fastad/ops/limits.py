"""Limits of fastad's compiled kernels: the one source for Python and C++.

setup.py reads this file (without importing fastad) and passes each limit to the compiler as a
macro, FASTAD_<NAME>; the built extension reports what it was compiled with in
fastad.extension.compiled.build_facts(), and a test checks the two agree.
"""

#: the largest k of knn on CUDA (each query's k best live in shared memory), FASTAD_CUDA_MAX_K
CUDA_MAX_K = 64
