"""What ``fdq-deploy --setup`` installs for a profile's runtimes, and the executorch pairing: its runtime
links the libtorch it was built against, so the board's torch and executorch come as a pair."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fdq.device.bundle import load_bundle
from fdq.host.cli import deploy_main
from fdq.host.deploy import refusal
from fdq.host.provision import (BoardPython, SetupError, choose_torch, executorch_for, requirements,
                                torch_release)
from fdq.host.targets import load_target


def _target(tmp_path: Path, **fields):
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump({"name": "pi", "transport": "ssh", "host": "127.0.0.1", "user": "pi",
                                    "python": "python3", "workdir": "~/fdq", **fields}))
    return path, load_target(str(path))


def test_setup_installs_every_runtime_and_pairs_executorch_with_its_torch(tmp_path):
    _, target = _target(tmp_path, runtimes=["torchscript", "onnxruntime", "ncnn", "mnn", "executorch"],
                        onnxruntime="1.19.2")
    packages, alone = requirements(target, "2.9.1")
    assert {"torch==2.9.1", "onnxruntime==1.19.2", "ncnn", "MNN==3.6.1", "ruamel.yaml>=0.17"} <= set(packages)
    assert alone == ["executorch==1.0.1"]  # the pair of PyPI's CPU-only aarch64 torch, without its declared deps
    _, on_213 = _target(tmp_path, runtimes=["executorch"], torch="2.13.0")
    packages, alone = requirements(on_213, "2.13.0")
    assert "torch==2.13.0" in packages and alone == ["executorch==1.5.1"]
    _, plain = _target(tmp_path, runtimes=["torchscript"])
    assert requirements(plain, "2.10.0") == (["numpy>=1.23,<3", "opencv-python-headless>=4.8,<6", "pyyaml>=6.0,<7",
                                              "psutil>=5.9,<8", "torch==2.10.0"], [])
    with pytest.raises(SetupError, match="the newest CPU-only torch for the board is 2.10.0; executorch has builds"):
        requirements(_target(tmp_path, runtimes=["executorch"])[1], "2.10.0")


PI_PYTHON = BoardPython("/usr/bin/python3", "3.11", "3.11.2", "cpython", "aarch64", ("glibc", "2.36"), ())


def _needs_cuda(version: str) -> bool:
    """Whether PyPI's aarch64 torch ``version`` wheel needs a CUDA distribution on the Pi."""
    needs = torch_release(PI_PYTHON, f"torch=={version}")[1]
    return any(name.startswith(("nvidia-", "cuda-")) for name in needs)


def test_setup_takes_the_newest_cpu_only_torch_when_the_profile_pins_none(tmp_path):
    """PyPI's newest aarch64 torch wheels need the CUDA toolkit (gigabytes; it cannot install on a Pi):
    without a pin --setup takes the newest wheel that needs none of it, read from the index's metadata."""
    _, plain = _target(tmp_path, runtimes=["torchscript"])
    chosen = choose_torch(PI_PYTHON, plain)
    assert not _needs_cuda(chosen)
    newest = torch_release(PI_PYTHON, "torch")[0]
    assert newest == chosen or _needs_cuda(newest), (newest, chosen)  # only CUDA builds are passed over
    _, with_executorch = _target(tmp_path, runtimes=["torchscript", "executorch"])
    paired = choose_torch(PI_PYTHON, with_executorch)
    assert executorch_for(paired) and not _needs_cuda(paired)
    _, cuda_pin = _target(tmp_path, runtimes=["torchscript"], torch="2.13.0")
    with pytest.raises(SetupError) as refused:
        choose_torch(PI_PYTHON, cuda_pin)
    assert str(refused.value).startswith("pi: the profile's torch 2.13.0 is a CUDA build for aarch64 / Python 3.11 "
                                         "(it needs cuda-toolkit")
    assert "set `torch:` in the profile to a CPU-only release" in str(refused.value)


def test_a_torch_no_executorch_was_built_for_is_one_line_before_any_connection(tmp_path, slim_fp32_bundle, capsys):
    profile, target = _target(tmp_path, runtimes=["torchscript", "executorch"], torch="2.11.0", port=9)
    with pytest.raises(SetupError, match="executorch has builds for torch 2.13"):
        requirements(target, target.torch)
    assert deploy_main(["--target", str(profile), "--setup", str(slim_fp32_bundle)]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["fdq-deploy: error: pi: the profile pins torch 2.11.0; executorch has builds for torch 2.13 "
                   "(executorch 1.5.1), torch 2.9 (executorch 1.0.1)"]


def _facts(**modules):
    return {"machine": "aarch64", "python": "3.11.2", "modules": {"torch": None, "executorch": None, **modules}}


def test_an_executorch_bundle_the_boards_pair_cannot_run_is_refused(slim_fp32_bundle, tmp_path):
    from fdq.host.export import export_bundle

    pte = load_bundle(export_bundle(slim_fp32_bundle, "executorch", tmp_path / "slim_pte"))
    why = refusal("pi", "python3", pte, _facts(torch="2.9.1", executorch="1.5.1"), ["executorch"], None)
    assert why == ("executorch 1.5.1 there (aarch64, Python 3.11.2) was built against torch 2.13, torch there is "
                   "2.9.1: slim_pte cannot load (fdq-deploy --setup installs a matching pair)")
    assert refusal("pi", "python3", pte, _facts(torch="2.13.0", executorch="1.5.1+cpu"), ["executorch"], None) is None
    assert refusal("pi", "python3", pte, _facts(torch="2.9.1", executorch="1.0.1"), ["executorch"], None) is None
    assert "lacks executorch" in refusal("pi", sys.executable, pte, _facts(torch="2.9.1"), ["executorch"], None)
