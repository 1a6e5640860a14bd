"""fastad.info(): what this installation built, loaded and can run."""
from __future__ import annotations

import torch

from fastad import extension
from fastad.version import __version__
from fastad.backend import get_backend

#: the x86 vector extensions that decide which CPU kernel paths (fastad's, oneDNN's, MKL's) can run
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16")


def cpu() -> dict:
    """{model: the CPU's model name, vector_extensions: those of VECTOR_EXTENSIONS it has}, from
    /proc/cpuinfo (model "unknown CPU" and no extensions where it cannot be read)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "vector_extensions": [f for f in VECTOR_EXTENSIONS if f in flags]}


def describe_cpu() -> str:
    """One line: "AMD EPYC 9B14 (avx2 fma avx512f ...)", as test logs and benchmark rows stamp it."""
    facts = cpu()
    return f"{facts['model']} ({' '.join(facts['vector_extensions']) or 'none of ' + ', '.join(VECTOR_EXTENSIONS)})"


def _op_backends() -> dict[str, list[str]]:
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastad::"))
    return {
        name.split("::", 1)[1]: [
            key.lower()
            for key in ("CPU", "CUDA")
            if torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
        ]
        for name in names
    }


def _cpu_kernels() -> dict[str, str] | str:
    """The CPU kernel each op uses here, or the reason none can be named."""
    from fastad.ops.knn import knn_cpu_kernels

    try:
        knn = knn_cpu_kernels()
    except ValueError as error:  # a bad FASTAD_CPU_KERNEL
        return str(error)
    then = f", then {knn['fp32']} for queries whose candidates overflow" if knn["knn"] == "bf16-gemm" else ""
    return {
        "knn": f"{knn['knn']}{then} (this CPU runs {', '.join(knn['runs_here'])})",
        "kcenter_coreset": "fp64 distance scan, vector clone chosen at load time",
    }


def _backbones() -> dict[str, dict]:
    """name -> {taps: {tap: [stride, channels]}, source, weights: where the file was found or why not}."""
    from fastad.models.components.zoo import BACKBONES, weights_location

    return {name: {"taps": {tap: list(v) for tap, v in spec.taps.items()}, "source": spec.source,
                   "weights": weights_location(name)} for name, spec in BACKBONES.items()}


def info() -> dict:
    """Facts about this installation, as a dict:

    fastad and torch versions, whether fastad._C loaded (and why not), the backends (cpu, cuda)
    each compiled op has, the CPU kernel the CPU ops use here (cpu_kernels), the CUDA
    architectures compiled, OpenMP, the threads torch uses, whether a CUDA device is visible, the
    backend selected with fastad.set_backend, and the backbone zoo (each backbone's taps, the
    source of its weights and where the weights file was found).
    """
    facts = extension.compiled.build_facts() if extension.loaded() else {}
    return {
        "fastad": __version__,
        "torch": torch.__version__,
        "cpu": describe_cpu(),
        "extension_loaded": extension.loaded(),
        "extension_error": extension.load_error,
        "ops": _op_backends(),
        "cpu_kernels": _cpu_kernels() if extension.loaded() else None,
        "cuda_archs": facts.get("cuda_archs"),
        "openmp": facts.get("openmp"),
        "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backend": get_backend(),
        "backbones": _backbones(),
    }


def format_info(facts: dict) -> str:
    lines = [
        f"fastad {facts['fastad']} (torch {facts['torch']})",
        f"CPU: {facts['cpu']}",
        f"compiled extension: {'loaded' if facts['extension_loaded'] else 'NOT loaded'}",
    ]
    if facts["extension_error"]:
        lines.append(f"  reason: {facts['extension_error']}")
    for op, backends in facts["ops"].items():
        lines.append(f"  op {op}: {', '.join(backends) or 'no kernels'}")
    kernels = facts.get("cpu_kernels")
    if isinstance(kernels, dict):
        lines += [f"  cpu kernel {op}: {kernel}" for op, kernel in kernels.items()]
    elif kernels:
        lines.append(f"  cpu kernels: {kernels}")
    lines += [
        f"CUDA archs compiled: {facts['cuda_archs'] or 'none (CPU-only build)'}",
        f"OpenMP: {facts['openmp'] or 'no'}, threads: {facts['threads']}",
        f"CUDA device: {facts['cuda_device'] or 'none'}",
        f"backend: {facts['backend']}",
    ]
    for name, backbone in facts["backbones"].items():
        taps = ", ".join(f"{tap} ({stride}, {channels} ch)" for tap, (stride, channels) in backbone["taps"].items())
        lines += [f"backbone {name}: taps {taps}", f"  weights: {backbone['weights']}"]
    return "\n".join(lines)
