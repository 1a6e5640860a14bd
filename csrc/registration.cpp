// Declares the fastad operator library and the build facts fastad.info() reports.
// Each operator folder adds its schemas (TORCH_LIBRARY_FRAGMENT, <op>_schema.cpp) and its
// kernels per dispatch key (TORCH_LIBRARY_IMPL) next to their implementation.
#include <Python.h>
#include <torch/library.h>

#include <c10/util/Exception.h>

#include "knn/knn_fused_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(fastad, m) {}

namespace {

PyObject* build_facts() {
#ifdef FASTAD_WITH_CUDA
  PyObject* archs = PyUnicode_FromString(FASTAD_CUDA_ARCHS);
  PyObject* cuda_max_k = PyLong_FromLong(FASTAD_CUDA_MAX_K);  // fastad/ops/limits.py, via setup.py
#else
  Py_INCREF(Py_None);
  PyObject* archs = Py_None;
  Py_INCREF(Py_None);
  PyObject* cuda_max_k = Py_None;
#endif
#ifdef _OPENMP
  PyObject* openmp = PyLong_FromLong(_OPENMP);
#else
  Py_INCREF(Py_None);
  PyObject* openmp = Py_None;
#endif
  return Py_BuildValue("{s:N,s:N,s:N}", "cuda_archs", archs, "openmp", openmp, "cuda_max_k", cuda_max_k);
}

PyObject* py_build_facts(PyObject*, PyObject*) {
  return build_facts();
}

// (kernels this CPU runs, best first; knn's first candidate kernel for `precision`; the fp32
// kernel of its second tier), honouring FASTAD_CPU_KERNEL; ValueError for a bad override.
PyObject* py_knn_cpu_kernels(PyObject*, PyObject* args) {
  const char* precision = "auto";
  if (!PyArg_ParseTuple(args, "|s", &precision)) return nullptr;
  using namespace fastad::knn;
  try {
    const std::vector<CpuKernel> here = cpu_kernels_here();
    PyObject* names = PyList_New(static_cast<Py_ssize_t>(here.size()));
    for (size_t i = 0; i < here.size(); ++i)
      PyList_SET_ITEM(names, i, PyUnicode_FromString(cpu_kernel_name(here[i])));
    return Py_BuildValue("(Nss)", names, cpu_kernel_name(first_cpu_kernel(precision)),
                         cpu_kernel_name(fp32_cpu_kernel()));
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

// {kernel name: peak flops per cycle and core} of the kernels this CPU runs, and the measured
// clock in Hz.
PyObject* py_knn_cpu_peak(PyObject*, PyObject*) {
  using namespace fastad::knn;
  PyObject* peaks = PyDict_New();
  for (CpuKernel kernel : cpu_kernels_here()) {
    PyObject* value = PyLong_FromLongLong(fp32_flops_per_cycle(kernel));
    PyDict_SetItemString(peaks, cpu_kernel_name(kernel), value);
    Py_DECREF(value);
  }
  return Py_BuildValue("(Nd)", peaks, measured_clock_hz());
}

PyMethodDef methods[] = {
    {"knn_cpu_peak", py_knn_cpu_peak, METH_NOARGS,
     "({kernel: peak flops per cycle and core}, measured clock in Hz)."},
    {"knn_cpu_kernels", py_knn_cpu_kernels, METH_VARARGS,
     "(kernels this CPU runs, knn's first candidate kernel, its fp32 kernel) for a precision."},
    {"build_facts", py_build_facts, METH_NOARGS,
     "dict(cuda_archs=str or None, openmp=version or None, cuda_max_k=int or None) of this build."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastad compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&module);
}
