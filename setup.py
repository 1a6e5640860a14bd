"""Build fastad._C: CPU kernels always, CUDA kernels when torch and nvcc allow.

Environment:
  FASTAD_CUDA=0|1          force the CUDA kernels off / on (default: on when torch is a
                           CUDA build and nvcc is found).
  TORCH_CUDA_ARCH_LIST     architectures to compile for (default "8.0;9.0").
  MAX_JOBS                 parallel compile jobs (ninja).
"""
import glob
import os
import runpy

from setuptools import find_packages, setup

# torch guesses the toolkit from the folder above `nvcc` on PATH, which is wrong when PATH holds
# a wrapper script; the standard location wins when the user named none.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists(
    "/usr/local/cuda/bin/nvcc"
):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)

DEFAULT_CUDA_ARCHS = "8.0;9.0"


def cuda_requested() -> bool:
    forced = os.environ.get("FASTAD_CUDA")
    available = cpp_extension.CUDA_HOME is not None and _torch_has_cuda()
    if forced == "0":
        return False
    if forced == "1":
        if not available:
            raise RuntimeError(
                "FASTAD_CUDA=1 but CUDA kernels cannot be built: "
                f"torch CUDA build={_torch_has_cuda()}, nvcc found={cpp_extension.CUDA_HOME is not None}"
            )
        return True
    if forced not in (None, ""):
        raise RuntimeError(f"FASTAD_CUDA must be 0 or 1, got {forced!r}")
    return available


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


def kernel_limits() -> list:
    """fastad/ops/limits.py's limits as (FASTAD_<NAME>, value) macros (the file is run on its own:
    importing fastad would need the extension being built)."""
    limits = runpy.run_path(os.path.join("fastad", "ops", "limits.py"))
    return [(f"FASTAD_{name}", str(value)) for name, value in limits.items() if name.isupper()]


def extension():
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cxx_flags = ["-O3", "-fopenmp"]
    macros = kernel_limits()
    if not cuda_requested():
        return cpp_extension.CppExtension(
            "fastad._C", sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"], define_macros=macros,
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    macros += [("FASTAD_WITH_CUDA", None), ("FASTAD_CUDA_ARCHS", f'"{archs}"')]
    sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
    nvcc_flags = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "fastad._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"], define_macros=macros, include_dirs=pip_cuda_include_dirs(),
    )


def pip_cuda_include_dirs() -> list:
    """Header folders of the CUDA libraries torch installs from PyPI (cuSPARSE, cuBLAS, ...).

    torch's CUDA headers include them, and a bare toolkit such as a minimal nvcc install may
    not ship them.
    """
    try:
        import nvidia
    except ImportError:
        return []
    found = set()
    for root in nvidia.__path__:
        for header in glob.glob(os.path.join(root, "**", "include", "cusparse.h"), recursive=True):
            found.add(os.path.dirname(header))
    return sorted(found)


setup(
    packages=find_packages(include=["fastad", "fastad.*"]),
    package_data={"fastad.report": ["templates/*"]},  # the report page's template, style and script
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
