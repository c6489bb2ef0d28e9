"""Runtimes (vitprune/runtime.py and the bench command): torch.compile without graph breaks,
eager int8, onnxruntime."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import pruned_family
from vitprune.adapters import input_shape
from vitprune.cli import main
from vitprune.runtime import quantize_eager, runner


def test_compile_fullgraph_matches_eager(pruned):
    torch._dynamo.reset()
    compiled = torch.compile(pruned, fullgraph=True, backend="aot_eager")  # fails on a break
    x = torch.randn(2, *input_shape(pruned))
    with torch.no_grad():
        assert (compiled(x) - pruned(x)).abs().max() < 1e-4


def test_inductor_compiled_pruned_model_matches_eager():
    model = pruned_family("deit_distilled")
    torch._dynamo.reset()
    with torch.no_grad():
        x = torch.randn(2, *input_shape(model))
        with runner(model, "compile", input_shape(model), 2) as run:
            assert (run(x) - model(x)).abs().max() < 1e-4


def test_eager_int8_quantizes_every_linear_layer_of_a_copy(tiny_vit):
    q = quantize_eager(tiny_vit)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(q.head, dynamic) and isinstance(q.blocks[0].mlp.fc1, dynamic)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert type(tiny_vit.head) is torch.nn.Linear  # the input model is untouched
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref, got = tiny_vit(x), q(x)
    assert 0 < ((got - ref).norm() / ref.norm()).item() < 0.1


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_bench_runs_in_each_runtime(saved, runtime, capsys):
    argv = ["bench", "--model", str(saved), "--runtime", runtime, "--int8", "--batch", "4",
            "--warmup", "1", "--repeats", "2", "--threads", "1", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runtime"] == runtime and res["int8"] and res["batch"] == 4
    assert res["throughput"] > 0 and res["repeats"] == 2


def test_bench_refuses_int8_with_compile_before_any_work(capsys):
    argv = ["bench", "--model", "no_such_model", "--runtime", "compile", "--int8"]
    assert main(argv) == 2
    assert "--int8 is offered with --runtime eager or onnxruntime" in capsys.readouterr().err


def test_runner_in_onnxruntime_gives_the_models_outputs(tiny_vit):
    shape = input_shape(tiny_vit)
    x = torch.randn(3, *shape)
    with runner(tiny_vit, "onnxruntime", shape, 3) as run:
        got = torch.from_numpy(run(x))
    with torch.no_grad():
        assert (got - tiny_vit(x)).abs().max() < 1e-4
