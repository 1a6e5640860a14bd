"""Where a Scorer runs its model's networks: "torch" (eager PyTorch, the default) or "openvino"
(OpenVINO's CPU runtime), while fastad's own kernels keep doing the search, the densities and
the score maps.

A model names the submodules that can move (AnomalyModel.networks): each maps an image-like
batch [B, ...] to a tensor, a tuple of tensors or a dict of tensors, contains no fastad op and
has no state that changes while scoring. With network_engine="openvino" the Scorer scores a
copy of the model in which each of them is replaced by an OpenVINONetwork: the submodule
converted (ov.convert_model, batch dynamic) and compiled for the CPU once per input shape, at
inference precision f32 for precision "fp32" (equal to eager PyTorch up to float rounding)
or bf16 for precision "bf16". On CPUs with depthwise-heavy backbones (efficientnet_lite*)
OpenVINO runs the network several times faster than eager PyTorch; benchmarks/RESULTS.md
has the measured split.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fastad.checks import check_choice

#: the engines a Scorer can run a model's networks on
NETWORK_ENGINES = ("torch", "openvino")
#: Scorer precision -> OpenVINO inference precision
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError("network_engine 'openvino' needs the openvino package "
                          "(pip install 'fastad[deploy]')") from error
    return openvino


def _flatten(output) -> tuple[list[torch.Tensor], object]:
    """A network's output -> (its tensors in order, how to rebuild it)."""
    if isinstance(output, torch.Tensor):
        return [output], None
    if isinstance(output, dict):
        return list(output.values()), tuple(output)
    if isinstance(output, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in output):
        return list(output), len(output)
    raise TypeError(f"a network must return a tensor, a tuple or a dict of tensors, got {type(output).__name__}")


def _rebuild(tensors: list[torch.Tensor], layout):
    if layout is None:
        return tensors[0]
    if isinstance(layout, tuple):
        return dict(zip(layout, tensors))
    return tuple(tensors)


class OpenVINONetwork(nn.Module):
    """`module` run by OpenVINO on the CPU: converted and compiled on the first batch of each
    input shape [*, C, H, W] (any batch size after that), at `precision` ("fp32" or "bf16"),
    with `num_threads` inference threads. forward(x float32 [B, ...]) returns what module(x)
    returns, float32, on the CPU. ValueError when the CPU does not run the precision natively
    (OpenVINO would run another one)."""

    def __init__(self, module: nn.Module, precision: str, num_threads: int):
        super().__init__()
        check_choice("precision", precision, tuple(OPENVINO_PRECISIONS))
        self.source = module   # kept for its conversion; its parameters are the model's own
        self.precision, self.num_threads = precision, num_threads
        self._compiled: dict[tuple, tuple] = {}

    def _compile(self, example: torch.Tensor) -> tuple:
        ov = _openvino()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):   # OpenVINO sets the precision, not autocast
            _, layout = _flatten(self.source(example[:1]))
            shape = ov.PartialShape([-1, *example.shape[1:]])
            converted = ov.convert_model(self.source, example_input=example[:1], input=[shape])
        hint = OPENVINO_PRECISIONS[self.precision]
        compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                               "INFERENCE_NUM_THREADS": self.num_threads})
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        if ran != getattr(ov.Type, hint):
            raise ValueError(f"network_engine 'openvino': this CPU runs precision {self.precision!r} as "
                             f"{ran.get_type_name()}, not {hint}; use precision 'fp32'")
        return compiled.create_infer_request(), compiled.outputs, layout

    @property
    def compiled_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The input shapes [C, H, W] compiled so far (one OpenVINO model each)."""
        return tuple(self._compiled)

    def forward(self, x: torch.Tensor):
        x = x.detach().to("cpu", torch.float32).contiguous()
        key = tuple(x.shape[1:])
        if key not in self._compiled:
            self._compiled[key] = self._compile(x)
        request, outputs, layout = self._compiled[key]
        results = request.infer({0: x.numpy()})            # copies out of OpenVINO's buffers
        return _rebuild([torch.from_numpy(results[output]) for output in outputs], layout)


def with_network_engine(model: nn.Module, engine: str, precision: str, num_threads: int | None = None) -> nn.Module:
    """`model` itself for engine "torch"; for "openvino", a copy of it (sharing its parameters,
    buffers and memory bank) whose `model.networks` submodules run as OpenVINONetwork.
    ValueError naming the engine when the model names no network, or the precision has no
    OpenVINO counterpart."""
    check_choice("network_engine", engine, NETWORK_ENGINES)
    if engine == "torch":
        return model
    names = tuple(getattr(model, "networks", ()))
    if not names:
        raise ValueError(f"network_engine {engine!r}: model {getattr(model, 'name', type(model).__name__)!r} "
                         f"names no network another engine can run; use 'torch'")
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"network_engine {engine!r} takes precision 'fp32' or 'bf16', got {precision!r}")
    threads = torch.get_num_threads() if num_threads is None else num_threads
    clone = copy.copy(model)
    clone._modules = dict(model._modules)   # the copy's own submodule table: the model keeps its networks
    for name in names:
        setattr(clone, name, OpenVINONetwork(getattr(model, name), precision, threads))
    return clone
