"""Runs train.py under torchrun with rank 0 starting 2 s after the others, so that any process
that leaves at once on an error they all meet leaves before rank 0 could report it.

    torchrun --standalone --nproc-per-node 2 tests/workers/late_rank_0.py [train.py flags]
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402
from distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    if os.environ["RANK"] == "0":
        time.sleep(2)
    exit_process(train.main(sys.argv[1:]))
