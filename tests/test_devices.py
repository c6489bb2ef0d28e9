"""Devices (vitprune/devices.py): one place resolves --device (every spelling checked, refused
before any work), and every stage runs where the resolved device says, never on the CPU by
default.

On a machine without a GPU the resolved device is swapped for a stand-in, the meta device: a
stage that honours it builds its model and batches there and runs its first forward, which a
global forward hook records (the devices of the module's parameters and of its inputs) and then
stops with :class:`Reached`; a stage that left anything on the CPU is caught by the record. A
compression run is walked stage by stage: a CPU run is stopped just before a stage, and the
stand-in run resumes it and must reach that stage's first forward on the stand-in.
"""

from __future__ import annotations

import traceback

import pytest
import torch

from vitprune import devices, dist
from vitprune.cli import main
from vitprune.errors import ConfigError
from vitprune.pipeline import MaskedAccuracy, calibration_batches
from vitprune.plan import PrunePlan
from vitprune.train import evaluate


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


STAND_IN = "meta"


class Reached(Exception):
    """A stage reached its first forward."""


class Spy:
    """Records, for the first module called, the devices of its parameters and inputs, and the
    function of vitprune that called it; then stops the run."""

    def __init__(self) -> None:
        self.params: set[str] = set()
        self.inputs: set[str] = set()
        self.caller = ""

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        self.params = {str(p.device) for p in module.parameters()}
        self.inputs = {str(a.device) for a in args if isinstance(a, torch.Tensor)}
        frames = [f.name for f in traceback.extract_stack() if "/vitprune/" in f.filename]
        self.caller = frames[-1] if frames else ""
        raise Reached(module.__class__.__name__)

    def check(self, caller: str) -> None:
        assert self.caller == caller, f"the first forward came from {self.caller}, not {caller}"
        assert self.params == {STAND_IN}, f"{caller}: parameters on {self.params}"
        assert self.inputs == {STAND_IN}, f"{caller}: inputs on {self.inputs}"


@pytest.fixture
def spy(monkeypatch):
    """Resolution swapped for the stand-in; the hook armed while a test calls ``spy.arm()``."""
    monkeypatch.setattr(devices, "resolve", lambda spec="auto": STAND_IN)
    monkeypatch.setenv("VITPRUNE_DEBUG", "1")  # the command line lets Reached through
    s = Spy()
    handles = []

    def arm():
        handles.append(torch.nn.modules.module.register_module_forward_pre_hook(s))
        return s

    s.arm = arm
    yield s
    for h in handles:
        h.remove()


def _synthetic(*extra: str) -> list[str]:
    return ["--model", "fmnist_vit_tiny", "--data", "synthetic", "--calib-size", "64",
            "--device", "cuda", "--threads", "1", *extra]


SMALL_SEARCH = ["--trials", "3", "--init", "2", "--calib-images", "32", "--score-images", "32"]


def test_score_command_scores_on_the_resolved_device(spy, tmp_path):
    spy.arm()
    with pytest.raises(Reached):
        main(["score", *_synthetic("--score-images", "16"), "--out", str(tmp_path / "s.json")])
    spy.check("collect")


def test_search_command_evaluates_on_the_resolved_device(spy, tmp_path, monkeypatch):
    scores = tmp_path / "s.json"
    monkeypatch.setattr(devices, "resolve", lambda spec="auto": "cpu")
    assert main(["score", *_synthetic("--score-images", "16"), "--out", str(scores)]) == 0
    monkeypatch.setattr(devices, "resolve", lambda spec="auto": STAND_IN)
    spy.arm()
    with pytest.raises(Reached):
        main(["search", *_synthetic("--budget", "0.6", "--quiet", *SMALL_SEARCH),
              "--scores", str(scores),
              "--out", str(tmp_path / "run")])
    spy.check("_counts")


class Stop(Exception):
    """Ends a CPU run just before a stage."""


def _stop(*_a, **_k):
    raise Stop


COMPRESS = ["compress", *_synthetic("--budget", "0.6", "--quiet", *SMALL_SEARCH, "--epochs", "1",
                                    "--max-steps-per-epoch", "2", "--bench-batches", "2")]


def test_compress_runs_every_stage_on_the_resolved_device(spy, tmp_path, monkeypatch):
    """Scoring, search, fine-tuning and evaluation, each reached on the stand-in: by the CLI
    from the start, then by resuming a CPU run stopped before each later stage."""
    import vitprune.compression as compression

    out = str(tmp_path / "run")
    real = {name: getattr(compression, name) for name in
            ("policy_search", "finetune", "evaluate_models")}
    # (stage, the function of vitprune that makes its first forward, the stage a CPU run stops at);
    # fine-tuning's first forward is in fit's optimisation step (_Step.epoch)
    steps = [("scoring", "collect", None), ("search", "_counts", "policy_search"),
             ("fine-tuning", "epoch", "finetune"), ("evaluation", "evaluate", "evaluate_models")]
    for stage, caller, stopped in steps:
        if stopped is not None:  # a CPU run up to this stage
            for name, fn in real.items():
                monkeypatch.setattr(compression, name, _stop if name == stopped else fn)
            monkeypatch.setattr(devices, "resolve", lambda spec="auto": "cpu")
            with pytest.raises(Stop):
                main(COMPRESS + ["--out", out])
            monkeypatch.setattr(compression, stopped, real[stopped])
        monkeypatch.setattr(devices, "resolve", lambda spec="auto": STAND_IN)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(spy)
        try:
            with pytest.raises(Reached):
                main(COMPRESS + ["--out", out])
        finally:
            handle.remove()
        spy.check(caller)
        assert stage  # (the stage each caller stands for, for the reader)


def test_the_api_takes_the_same_device_path(spy, tmp_path):
    import vitprune

    spy.arm()
    with pytest.raises(Reached):
        vitprune.compress("fmnist_vit_tiny", "synthetic", 0.6, tmp_path / "run", device="cuda",
                          progress=False, trials=3, init=2, calib_images=32, score_images=32,
                          calib_size=64)
    spy.check("collect")


# -- collectives: every tensor handed to one lives on the rank's device ----------------------
@pytest.fixture
def collective(monkeypatch):
    """A world of two as far as vitprune's helpers can tell; all_reduce records and stops."""
    seen: list[str] = []

    def all_reduce(t, *a, **k):
        seen.append(str(t.device))
        raise Reached

    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist.td, "all_reduce", all_reduce)
    monkeypatch.setattr(dist.td, "broadcast_object_list", lambda box, src=0: None)
    return seen


def test_search_evaluations_reduce_on_the_models_device(collective, tiny_vit, synth_splits):
    batches = [(x.to(STAND_IN), y.to(STAND_IN))
               for x, y in calibration_batches(synth_splits, 32, batch_size=16)]
    for objective in ("top1", "kl"):
        acc = MaskedAccuracy(tiny_vit.to(STAND_IN), batches, objective=objective)
        with pytest.raises(Reached):
            acc(_full_plan(tiny_vit))
        acc.close()
    assert collective == [STAND_IN, STAND_IN]


def _full_plan(model) -> PrunePlan:
    from vitprune.adapters import vit_shape

    return PrunePlan.dense(vit_shape(model))


def test_evaluation_and_training_sums_reduce_on_the_given_device(collective, tiny_vit,
                                                                  synth_splits):
    from vitprune.data import make_loader

    with pytest.raises(Reached):
        evaluate(tiny_vit.to(STAND_IN), make_loader(synth_splits.calib, 32))
    with pytest.raises(Reached):
        dist.sum_([1.0], STAND_IN)  # the training loss, summed where the run computes
    assert collective == [STAND_IN, STAND_IN]
