"""checkpointing: saves are fsynced before they are renamed into place, and the temporary
files of interrupted saves are cleaned at the next start, and only then."""

import os
import stat
from pathlib import Path

import pytest

import checkpointing
import train
from cli import UserError
from conftest import error_line, only_run, run_folder
from test_train import load, tiny_args


def killed_save(path: Path, monkeypatch) -> Path:
    """The temporary file that a save of PATH leaves behind when the process dies before its rename."""
    before = set(path.parent.iterdir())

    def dies(src, dst):
        raise OSError("killed")

    with monkeypatch.context() as m:
        m.setattr(checkpointing.os, "replace", dies)
        m.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # a killed process cleans nothing up
        with pytest.raises(UserError):
            checkpointing.atomic_write_text("half a file", path)
    (tmp,) = set(path.parent.iterdir()) - before
    return tmp


def test_only_the_temporaries_of_interrupted_saves_are_removed(tmp_path, monkeypatch):
    """Every save's leftover temporary goes; the saved files, the lock and files of other names stay."""
    kept = [tmp_path / name for name in ("last.pt", "best.pt", "metrics.jsonl", ".lock", "notes.tmp", ".notes")]
    for path in kept:
        path.write_text("kept")
    stale = [killed_save(tmp_path / name, monkeypatch) for name in ("last.pt", "best.pt", "metrics.jsonl")]
    assert all(path.name.startswith(".") for path in stale) and len(set(stale)) == 3
    checkpointing.remove_stale_temporaries(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


@pytest.mark.slow
def test_a_new_run_removes_the_temporaries_a_killed_first_save_left(tmp_path, tiny_cifar, monkeypatch):
    """A run killed in its first save has no last.pt: starting it afresh removes what that save left."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "1")
    run_dir = run_folder(train.CIFAR10, args)
    run_dir.mkdir(parents=True)
    stale = [killed_save(run_dir / name, monkeypatch) for name in ("last.pt", "metrics.jsonl")]
    assert train.main(args) == 0
    assert not any(path.exists() for path in stale)
    assert load(run_dir / "last.pt")["epoch"] == 1 and (run_dir / ".lock").exists()


@pytest.mark.slow
@pytest.mark.skipif(checkpointing.fcntl is None, reason="runs are locked on POSIX only")
def test_a_start_refused_by_the_run_lock_leaves_the_running_saves_temporary_alone(
    tmp_path, tiny_cifar, monkeypatch, capsys
):
    """Only the process holding the run's lock may clean: a second start on the run removes nothing."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "1")
    run_dir = run_folder(train.CIFAR10, args)
    run_dir.mkdir(parents=True)
    lock = checkpointing.acquire_run_lock(run_dir)  # the process training the run
    try:
        in_flight = killed_save(run_dir / "last.pt", monkeypatch)  # as if its save were still being written
        capsys.readouterr()
        assert "another process is training the run" in error_line(train.main(args), capsys)
        assert in_flight.exists()
    finally:
        checkpointing.release_run_lock(lock)


def test_checkpoint_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Bug: os.replace before the temporary file's fsync (a crash could leave an empty last.pt)."""
    calls, fsync, replace = [], os.fsync, os.replace

    def recording_fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def recording_replace(src, dst):
        calls.append("replace")
        replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "fsync", recording_fsync)
    monkeypatch.setattr(checkpointing.os, "replace", recording_replace)
    checkpointing.atomic_save({"epoch": 1}, tmp_path / "last.pt")
    assert calls == ["fsync file", "replace", "fsync folder"]
    assert load(tmp_path / "last.pt") == {"epoch": 1}


@pytest.mark.slow
def test_a_killed_saves_temporary_file_is_removed_on_resume(tmp_path, tiny_cifar):
    """Bug: the next start no longer removes the .last.pt.XXXX.tmp a killed save left behind."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "2")
    assert train.main([*args, "--stop-after", "1"]) == 0
    run_dir = only_run(tmp_path / "ck")
    stale = run_dir / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert train.main([*args, "-r"]) == 0
    assert not stale.exists()
    assert load(run_dir / "last.pt")["epoch"] == 2
