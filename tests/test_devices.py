"""One place resolves the device: every spelling checked, refused before any work."""

from __future__ import annotations

import pytest
import torch

from vitprune import devices
from vitprune.cli import main
from vitprune.errors import ConfigError


def test_auto_and_cpu_resolve_to_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == "cpu"
    assert devices.resolve("cpu") == "cpu"
    assert devices.resolve(" CPU ") == "cpu"


@pytest.mark.parametrize("spec", ["banana", "mps", "cuda:x", "gpu", "cuda:-1", ""])
def test_unknown_devices_are_refused_naming_the_spellings(spec):
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N") as e:
        devices.resolve(spec)
    assert e.value.field == "device"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:9"])
def test_cuda_without_cuda_is_refused_with_the_fix(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available here.*use --device cpu"):
        devices.resolve(spec)


def _fake_gpus(monkeypatch, count: int, current: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_cuda_indices_are_checked_against_the_gpus_present(monkeypatch):
    _fake_gpus(monkeypatch, 2, current=1)
    assert devices.resolve("auto") == "cuda:1"  # the current GPU
    assert devices.resolve("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="cuda:5 does not exist: this machine has 2 GPU"):
        devices.resolve("cuda:5")


def test_under_torchrun_each_rank_takes_its_local_gpu(monkeypatch):
    _fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.resolve("cuda") == "cuda:3"
    assert devices.resolve("auto") == "cuda:3"
    assert devices.resolve("cuda:3") == "cuda:3"  # resolving a resolved device changes nothing
    with pytest.raises(ConfigError, match="each rank takes the GPU of its LOCAL_RANK"):
        devices.resolve("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "7")
    with pytest.raises(ConfigError, match="cuda:7 does not exist"):
        devices.resolve("cuda")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_counts_are_refused_before_anything_changes(threads):
    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        devices.setup("cpu", threads)
    assert torch.get_num_threads() == before


def test_autocast_is_bf16_on_cuda_only_unless_forced():
    with devices.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    with devices.autocast("cpu", enabled=True):
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with devices.autocast("cuda", enabled=False):
        assert not torch.is_autocast_enabled("cuda")


def test_device_of_a_model_is_where_its_parameters_are(tiny_vit):
    assert devices.device_of(tiny_vit) == "cpu"
    assert devices.device_of(tiny_vit.to("meta")) == "meta"
    assert devices.device_of(torch.nn.Identity()) == "cpu"


@pytest.mark.parametrize("cmd", ["compress", "search", "score", "train", "eval", "bench",
                                 "latency-table"])
@pytest.mark.parametrize("spec", ["cuda", "banana"])
def test_every_command_refuses_a_missing_device_before_any_work(tmp_path, capsys, monkeypatch,
                                                                 cmd, spec):
    """Exit 2 with one line, before the data is read (a missing --data-dir would be the error
    otherwise) and before --out is claimed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    argv = [cmd, "--model", "fmnist_vit_tiny", "--device", spec]
    if cmd not in ("bench", "latency-table"):
        argv += ["--data", "imagefolder", "--data-dir", str(tmp_path / "missing")]
    if cmd in ("compress", "search", "score", "train", "latency-table"):
        argv += ["--out", str(out)]
    if cmd == "search":
        argv += ["--budget", "0.6"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitprune: error: --device "), err
    assert not out.exists()
