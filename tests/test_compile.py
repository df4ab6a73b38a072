"""--compile: the whole step compiled with no graph break, no recompilation after warm-up,
exact resume, and eager's results within a stated tolerance."""

import functools
import json

import pytest
import torch
import torch._dynamo

import engine
import mnist
import train
from conftest import only_run
from devices import FP32
from distributed import SINGLE_PROCESS
from engine import Place, TrainState, compile_step, train_step
from primary_net import PrimaryNetwork
from test_train import assert_same_state, load, run_args

# A graph-capturing backend without C++ code generation: the same graphs and guards as
# inductor's, in seconds.
FAST = functools.partial(compile_step, backend="aot_eager")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_whole_step_is_one_graph_and_an_lr_change_does_not_recompile():
    torch.manual_seed(0)
    model = PrimaryNetwork(10, 1)
    state = TrainState.create(
        model,
        "adam",
        2e-3,
        lambda step: 1.0 if step < 2 else 0.1,
        Place(torch.device("cpu"), SINGLE_PROCESS, FP32, torch.contiguous_format),
    )
    state.objective, state.step_optimizer = compile_step(
        state, fullgraph=True, backend="aot_eager"
    )  # fullgraph: a graph break would raise
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    train_step(state, x, y, 5e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(4):  # across the lr boundary at step 2
        train_step(state, x, y, 5e-4)
    assert float(state.optimizer.param_groups[0]["lr"]) == pytest.approx(2e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly(tmp_path, cifar_dir, monkeypatch):
    monkeypatch.setattr(engine, "compile_step", FAST)
    straight = run_args(tmp_path / "a", cifar_dir, "--epochs", "2", "--compile")
    assert train.main(straight) == 0
    split = run_args(tmp_path / "b", cifar_dir, "--epochs", "2", "--compile")
    assert train.main([*split, "--stop-after", "1"]) == 0
    assert train.main([*split, "-r"]) == 0
    a, b = load(only_run(tmp_path / "a" / "ck") / "last.pt"), load(only_run(tmp_path / "b" / "ck") / "last.pt")
    assert_same_state(a, b)
    assert torch.is_tensor(b["optimizer"]["param_groups"][0]["lr"])  # the lr the compiled step reads
    either = run_args(tmp_path / "c", cifar_dir, "--epochs", "2")  # a compiled run goes on eager
    assert train.main([*either, "--compile", "--stop-after", "1"]) == 0
    assert train.main([*either, "--stop-after", "2", "-r"]) == 0
    assert isinstance(load(only_run(tmp_path / "c" / "ck") / "last.pt")["optimizer"]["param_groups"][0]["lr"], float)


@pytest.mark.slow
def test_inductor_matches_eager(tmp_path, mnist_dir):
    """Inductor reorders floating-point sums, so a compiled run is close to an eager one, not
    equal: each epoch's mean training loss within 1e-4 (relative) over two epochs of MNIST."""
    common = [
        "--val-size",
        "20",
        "--batch-size",
        "50",
        "--no-download",
        "--no-progress",
        "--device",
        "cpu",
        "--data-dir",
        str(mnist_dir),
        "--epochs",
        "2",
        "--weight-decay",
        "1e-4",
    ]
    losses = []
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        folders = ["--checkpoint-dir", str(tmp_path / name), "--log-dir", str(tmp_path / "tb" / name)]
        assert mnist.main([*common, *folders, *extra]) == 0
        records = [json.loads(line) for line in (only_run(tmp_path / name) / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["train_loss"] for r in records])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
