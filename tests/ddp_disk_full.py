"""Runs train.py under torchrun with rank 0's disk filling up at its second checkpoint save;
rank 0 then waits 3 s before it exits, so that rank 1 has to stop by itself.

    torchrun --standalone --nproc-per-node 2 tests/ddp_disk_full.py [train.py flags]
"""

import errno
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import checkpointing  # noqa: E402
import train  # noqa: E402


def main() -> int:
    real_save, saves = checkpointing.torch.save, []

    def fills_the_disk(obj, f, *args, **kwargs):
        if args or kwargs:  # torch.distributed pickling tensors, not a checkpoint
            return real_save(obj, f, *args, **kwargs)
        saves.append(1)
        if len(saves) > 2:  # epoch 1 saved best.pt and last.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    if os.environ["RANK"] == "0":  # only rank 0 writes, so only rank 0 can hit a full disk
        checkpointing.torch.save = fills_the_disk
    code = train.main(sys.argv[1:])
    if os.environ["RANK"] == "0":  # rank 0 lingers: torchrun must not be the one that ends rank 1
        time.sleep(3)
    return code


if __name__ == "__main__":
    sys.exit(main())
