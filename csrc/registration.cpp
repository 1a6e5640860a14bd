// Declares the fastad operator library and the build facts fastad.info() reports.
// Each operator folder adds its schemas (TORCH_LIBRARY_FRAGMENT, <op>_schema.cpp) and its
// kernels per dispatch key (TORCH_LIBRARY_IMPL) next to their implementation.
#include <Python.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(fastad, m) {}

namespace {

PyObject* build_facts() {
#ifdef FASTAD_WITH_CUDA
  PyObject* archs = PyUnicode_FromString(FASTAD_CUDA_ARCHS);
#else
  Py_INCREF(Py_None);
  PyObject* archs = Py_None;
#endif
#ifdef _OPENMP
  PyObject* openmp = PyLong_FromLong(_OPENMP);
#else
  Py_INCREF(Py_None);
  PyObject* openmp = Py_None;
#endif
  return Py_BuildValue("{s:N,s:N}", "cuda_archs", archs, "openmp", openmp);
}

PyObject* py_build_facts(PyObject*, PyObject*) {
  return build_facts();
}

PyMethodDef methods[] = {
    {"build_facts", py_build_facts, METH_NOARGS,
     "dict(cuda_archs=str or None, openmp=version or None) of this build."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastad compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&module);
}
