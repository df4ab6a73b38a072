"""Runs train.py under torchrun with rank 0's disk filling up at its second checkpoint
save; rank 0 then stays until rank 1 has ended, so that rank 1 has to stop by itself
(torchrun ends the others once one process has exited).

    torchrun --standalone --nproc-per-node 2 tests/workers/disk_full.py OUT_DIR [train.py flags]

Rank 1 writes OUT_DIR/rank1-ended just before it exits.
"""

import errno
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import checkpointing  # noqa: E402
import train  # noqa: E402
from distributed import exit_process  # noqa: E402


def fill_the_disk_at_the_third_save() -> None:
    real_save, saves = checkpointing.torch.save, []

    def fills_the_disk(obj, f, *args, **kwargs):
        if args or kwargs:  # torch.distributed pickling tensors, not a checkpoint
            return real_save(obj, f, *args, **kwargs)
        saves.append(1)
        if len(saves) > 2:  # epoch 1 saved best.pt and last.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    checkpointing.torch.save = fills_the_disk


def main() -> int:
    out, rank = Path(sys.argv[1]), os.environ["RANK"]
    if rank == "0":  # only rank 0 writes, so only rank 0 can hit a full disk
        fill_the_disk_at_the_third_save()
    code = train.main(sys.argv[2:])
    if rank == "1":
        (out / "rank1-ended").write_text(str(code))
    else:
        for _ in range(6000):  # up to 10 minutes: rank 1 ends within seconds unless it hangs
            if (out / "rank1-ended").exists():
                break
            time.sleep(0.1)
    return code


if __name__ == "__main__":
    exit_process(main())
