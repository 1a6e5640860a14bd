"""The package around the ops: info(), backends, a missing extension, the command line."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import fastad


def test_info_reports_the_build():
    facts = fastad.info()
    assert facts["fastad"] == fastad.__version__ and facts["torch"] == torch.__version__
    assert facts["extension_loaded"] is True and facts["extension_error"] is None
    assert set(facts["ops"]) >= {"knn", "kcenter_coreset"}
    assert all("cpu" in backends for backends in facts["ops"].values())
    if facts["cuda_archs"] is not None:
        assert all("cuda" in backends for backends in facts["ops"].values())
    assert facts["threads"] >= 1 and facts["backend"] == "native"


def test_kernel_limits_come_from_one_place():
    """The CUDA kernels were compiled with fastad/ops/limits.py's values (setup.py passes them),
    and the Python checks use the same constants."""
    import importlib

    from fastad.ops.limits import CUDA_MAX_K
    knn_module = importlib.import_module("fastad.ops.knn")   # fastad.ops.knn the attribute is the function
    built = fastad.extension.compiled.build_facts()
    assert set(built) >= {"cuda_archs", "openmp", "cuda_max_k"}
    if built["cuda_archs"] is None:
        assert built["cuda_max_k"] is None
    else:
        assert built["cuda_max_k"] == CUDA_MAX_K
    assert knn_module.CUDA_MAX_K is CUDA_MAX_K


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastad.set_backend("fast")
    assert fastad.get_backend() == "native"


def test_use_backend_restores_the_previous_one():
    with fastad.use_backend("reference"):
        assert fastad.get_backend() == "reference"
    assert fastad.get_backend() == "native"


WITHOUT_EXTENSION = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideCompiledExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fastad._C":
                raise ImportError("simulated: extension not built")

    sys.meta_path.insert(0, HideCompiledExtension())
    import torch, fastad
    facts = fastad.info()
    assert facts["extension_loaded"] is False
    assert "simulated: extension not built" in facts["extension_error"]
    query, bank = torch.randn(5, 3), torch.randn(20, 3)
    try:
        fastad.ops.knn(query, bank, 2)
    except fastad.extension.ExtensionNotLoadedError as error:
        assert "fastad.ops.knn" in str(error) and 'set_backend("reference")' in str(error)
    else:
        raise AssertionError("knn ran without its extension")
    fastad.set_backend("reference")
    dist, index = fastad.ops.knn(query, bank, 2)
    assert dist.shape == (5, 2)
    print("ok")
    """
)


def test_missing_extension_is_reported_and_ops_raise_unless_reference():
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSION], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_info_json():
    result = subprocess.run([sys.executable, "-m", "fastad", "info", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["extension_loaded"] is True



def test_csrc_file_roles_and_one_check_float():
    """Every op folder names its files by role (<family>.cpp CPU kernels and registration,
    <family>_cuda.cu, <family>_common.h, <folder>_schema.cpp); helpers of several folders live in
    csrc/common/ and are defined once."""
    import pathlib
    import re

    csrc = pathlib.Path(__file__).resolve().parents[1] / "csrc"
    role = re.compile(r"^[a-z]+(_[a-z]+)*?(_cuda\.cu|_common\.h|_schema\.cpp|\.cpp)$")
    folders = [d for d in csrc.iterdir() if d.is_dir() and d.name != "common"]
    for folder in folders:
        assert (folder / f"{folder.name}_schema.cpp").exists(), folder
        for path in folder.iterdir():
            assert role.match(path.name), f"{path} does not follow the file roles"
            if path.suffix == ".cu":
                assert not (folder / (path.stem.removesuffix("_cuda") + "_cuda.cpp")).exists()
    sources = [p for p in csrc.rglob("*") if p.suffix in (".cpp", ".cu", ".h")]
    defining = [p for p in sources if re.search(r"^inline void check_float\(|^void check_float\(", p.read_text(), re.M)]
    assert [p.relative_to(csrc).as_posix() for p in defining] == ["common/checks.h"]
