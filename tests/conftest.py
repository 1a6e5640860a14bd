"""Shared test helpers: the devices to run on, a TF32-off fixture and a float64 brute-force k-NN oracle."""
import contextlib

import pytest
import torch

def pytest_report_header(config):
    """One header line naming the CPU and its vector extensions, so a run's log says which low-precision
    paths were native and which emulated."""
    from fastad.info import describe_cpu

    return f"cpu: {describe_cpu()}; torch capability: {torch.backends.cpu.get_cpu_capability()}"


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


def brute_force_knn(query: torch.Tensor, bank: torch.Tensor, k: int):
    """float64 exact k-NN on the CPU: (dist [N, k], index [N, k]), ties to the lower index."""
    q, b = query.double().cpu(), bank.double().cpu()
    d = (q[:, None, :] - b[None, :, :]).pow(2).sum(-1).sqrt()
    d, i = torch.sort(d, dim=1, stable=True)
    return d[:, :k], i[:, :k]


@pytest.fixture
def no_tf32():
    """TF32 off for matmuls and cuDNN convolutions (both default to TF32 on Ampere and later), so a
    float32 result can be compared with a float64 one at float32 tolerances."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_rawpixel_run(folder):
    """folder, holding a trained raw-pixel kNN checkpoint: no optimizer steps, only its memory bank
    of three 64 px builtin:gravel training crops (the small real run the engine tests score with)."""
    import fastad
    from fastad.engine import train
    from fastad.models import create_model

    train_set = fastad.data.open_dataset("builtin:gravel", "train", size=64)
    train(create_model("rawpixel"), torch.stack([train_set[i].image for i in range(3)]), run_dir=folder,
          progress=False)
    return folder


def write_gravel_pngs(folder, split: str, indices, size: int = 48):
    """folder, holding builtin:gravel `split` crops `indices` at `size` px as 8-bit PNGs named
    00.png, 01.png, ... in the order of `indices`."""
    import fastad
    from fastad.data.images import save_image

    dataset = fastad.data.open_dataset("builtin:gravel", split, size=size)
    for n, i in enumerate(indices):
        save_image(dataset[i].image, folder / f"{n:02d}.png")
    return folder


@contextlib.contextmanager
def scoring_fails_on_call(monkeypatch, n: int):
    """Inside the block fastad.Scorer.score raises OSError(28, "No space left on device") on its
    n-th call (a disk filling up mid-run); the real method is back after the block."""
    import fastad

    real, calls = fastad.Scorer.score, []

    def failing(self, images):
        calls.append(1)
        if len(calls) == n:
            raise OSError(28, "No space left on device")
        return real(self, images)

    monkeypatch.setattr(fastad.Scorer, "score", failing)
    try:
        yield
    finally:
        monkeypatch.setattr(fastad.Scorer, "score", real)
