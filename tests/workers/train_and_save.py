"""Runs train.py under torchrun and saves each process's final model state (for the tests).

torchrun --standalone --nproc-per-node 2 tests/workers/train_and_save.py OUT_DIR [train.py flags]
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import runner  # noqa: E402
import train  # noqa: E402
from distributed import exit_process  # noqa: E402


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    models = []
    create = runner.TrainState.create

    def recording(model, *args, **kwargs):  # fit builds the training state once, from the model it trains
        models.append(model)
        return create(model, *args, **kwargs)

    runner.TrainState.create = recording
    code = train.main(argv)
    torch.save(models[0].state_dict(), out / f"rank{os.environ['RANK']}.pt")
    return code


if __name__ == "__main__":
    exit_process(main())
