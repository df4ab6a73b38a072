"""Runs train.py under torchrun and saves each process's final model state (for the tests).

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT_DIR [train.py flags]
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import runner  # noqa: E402
import train  # noqa: E402


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    models = []
    build_optimizer = runner.build_optimizer

    def recording(model, name, lr):  # fit builds the optimizer once, from the model it trains
        models.append(model)
        return build_optimizer(model, name, lr)

    runner.build_optimizer = recording
    code = train.main(argv)
    torch.save(models[0].state_dict(), out / f"rank{os.environ['RANK']}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main())
