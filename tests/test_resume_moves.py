"""A resume keeps the optimizer implementation chosen for the place it resumes on.

A checkpoint's optimizer state holds the ``fused``, ``foreach`` and ``capturable`` flags of
the place that wrote it; `TrainState.load` must not let them replace those `TrainState.create`
chose for the current place. Checked on the CPU: the places are described to `create`
(a CUDA one included), while the parameters stay on the CPU.
"""

import warnings

import pytest
import torch

from devices import FP32, Precision
from distributed import SINGLE_PROCESS
from engine import IMPLEMENTATION, Place, TrainState

BF16, FP16 = Precision("bf16"), Precision("fp16")
# (device, precision, compiled) where the checkpoint was written -> where it resumes
MOVES = {
    "cpu to cuda": (("cpu", FP32, False), ("cuda", BF16, False)),
    "cuda to cpu": (("cuda", BF16, False), ("cpu", FP32, False)),
    "compiled to eager": (("cuda", BF16, True), ("cuda", BF16, False)),
    "eager to compiled": (("cuda", BF16, False), ("cuda", BF16, True)),
    "fp16 to bf16": (("cuda", FP16, False), ("cuda", BF16, False)),
}


def state_at(device: str, precision: Precision, compiled: bool) -> TrainState:
    """A fresh TrainState as `runner` creates it for a run at that place."""
    torch.manual_seed(0)
    place = Place(torch.device(device), SINGLE_PROCESS, precision, torch.contiguous_format)
    with warnings.catch_warnings():  # an fp16 "cuda" GradScaler on a machine without CUDA says it is disabled
        warnings.simplefilter("ignore", UserWarning)
        return TrainState.create(torch.nn.Linear(3, 2), "adam", 1e-3, lambda step: 1.0, place, compiled)


def checkpoint_of(state: TrainState) -> dict:
    """What a checkpoint written at STATE's place holds: its optimizer's state after a step, with its flags."""
    trained = torch.optim.Adam(state.model.parameters(), lr=1e-3)  # steps on the CPU whatever the place
    state.model(torch.randn(4, 3)).sum().backward()
    trained.step()
    saved = trained.state_dict()
    for group, own in zip(saved["param_groups"], state.optimizer.param_groups):
        group.update({k: own[k] for k in IMPLEMENTATION})
    return {
        "model": state.model.state_dict(),
        "optimizer": saved,
        "scheduler": state.scheduler.state_dict(),
        "scaler": None,
    }


@pytest.mark.parametrize("move", MOVES)
def test_a_resume_keeps_the_optimizer_chosen_for_its_place(move):
    source, target = MOVES[move]
    ckpt = checkpoint_of(state_at(*source))
    expected = {k: state_at(*target).optimizer.param_groups[0][k] for k in IMPLEMENTATION}
    resumed = state_at(*target)
    resumed.load(ckpt)
    assert (resumed.scaler is not None) == target[1].scaled  # fp16 alone scales its loss
    assert {k: resumed.optimizer.param_groups[0][k] for k in IMPLEMENTATION} == expected
    for param, state in resumed.optimizer.state.items():
        on_device = expected["fused"] or expected["capturable"]  # else Adam keeps its step count on the CPU
        assert state["step"].device == (param.device if on_device else torch.device("cpu"))
        assert state["step"].dtype == torch.float32 and float(state["step"]) == 1.0
        assert torch.equal(state["exp_avg"], ckpt["optimizer"]["state"][0 if param.dim() == 2 else 1]["exp_avg"])
