"""Where a run ran: recorded in every checkpoint, one entry per place, shown by compare.py."""

import platform
import subprocess

import pytest
import torch

import provenance
import run_records
import tables
import train
from conftest import as_rank, only_run
from test_train import load, run_args


@pytest.mark.slow
def test_collect_names_torch_python_the_device_and_this_clone():
    here = provenance.collect(torch.device("cpu"), processes=1)
    assert here["torch"] == str(torch.__version__) and here["python"] == platform.python_version()
    assert here["threads"] == torch.get_num_threads() and here["processes"] == 1
    assert here["device"] == provenance.device_model(torch.device("cpu")) and here["device"] != provenance.UNKNOWN
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=provenance.REPO, capture_output=True, text=True
    ).stdout.strip()
    assert here["commit"] == (head or provenance.UNKNOWN) and isinstance(here["dirty"], bool) == bool(head)


def test_outside_a_git_clone_the_commit_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.git_state() == (provenance.UNKNOWN, provenance.UNKNOWN)


@pytest.mark.slow
def test_a_run_records_its_place_once_and_again_when_it_moves(tmp_path, cifar_dir):
    args = run_args(tmp_path, cifar_dir, "--epochs", "3", "--stop-after", "1")
    assert train.main(args) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    (first,) = load(last)["provenance"]
    assert first == {"from_step": 0, **provenance.collect(torch.device("cpu"), 1)}

    assert train.main([*args, "-r", "--stop-after", "2"]) == 0  # the same place: no new entry
    assert load(last)["provenance"] == [first]

    moved = load(last)
    moved["provenance"] = [{**first, "torch": "2.3.0", "device": "elsewhere"}]  # as if trained elsewhere so far
    torch.save(moved, last)
    assert train.main([*args, "-r", "--stop-after", "3"]) == 0
    assert load(last)["provenance"] == [moved["provenance"][0], {**first, "from_step": 10}]  # 2 epochs x 5 steps


def test_describe_is_short_and_says_unknown_for_runs_that_did_not_record():
    here = {
        "from_step": 0,
        "torch": "2.14.1",
        "python": "3.11.7",
        "device": "AMD EPYC 7B13",
        "threads": 1,
        "processes": 1,
        "commit": "05a27ffabcdef",
        "dirty": True,
    }
    there = {**here, "from_step": 9, "device": "NVIDIA H100 (sm_90)", "processes": 4, "dirty": False}
    assert provenance.describe([here]) == "torch 2.14.1, AMD EPYC 7B13 (1 thread), 05a27ff+dirty"
    assert provenance.describe([here, there]) == (
        "torch 2.14.1, AMD EPYC 7B13 (1 thread), 05a27ff+dirty, then "
        "torch 2.14.1, NVIDIA H100 (sm_90) (1 thread x 4 processes), 05a27ff"
    )
    assert provenance.describe([{"from_step": 0, **provenance.unknown()}]) == "unknown"


@pytest.mark.slow
def test_compare_shows_where_each_run_ran(tmp_path, cifar_dir):
    assert train.main(run_args(tmp_path, cifar_dir, "--epochs", "1")) == 0
    (run,) = run_records.find_runs([tmp_path / "ck"])
    assert tables.run_cells(run)[-1] == provenance.describe(load(only_run(tmp_path / "ck") / "last.pt")["provenance"])
    assert tables.run_cells(run)[-1].startswith(f"torch {torch.__version__}, ")


def git(repo, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_only_changes_to_tracked_files_make_the_commit_dirty(tmp_path, monkeypatch):
    """Untracked files leave a clone clean; a changed tracked file makes it dirty."""
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    git(tmp_path, "add", "tracked.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.git_state() == (head, False)
    (tmp_path / "untracked.txt").write_text("notes\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text("{}\n")
    assert provenance.git_state() == (head, False)
    (tmp_path / "tracked.py").write_text("x = 2\n")
    assert provenance.git_state() == (head, True)


@pytest.mark.slow
def test_a_moved_run_adds_one_entry_however_often_it_resumes_there(tmp_path, cifar_dir, monkeypatch):
    """Two resumes at a new place add one provenance entry, starting at the first of them."""
    args = run_args(tmp_path, cifar_dir, "--epochs", "3", "--stop-after", "1")
    assert train.main(args) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    (first,) = load(last)["provenance"]
    here = provenance.collect
    monkeypatch.setattr(
        provenance, "collect", lambda device, processes: {**here(device, processes), "device": "elsewhere"}
    )
    assert train.main([*args, "-r", "--stop-after", "2"]) == 0
    assert train.main([*args, "-r", "--stop-after", "3"]) == 0
    ckpt = load(last)
    assert ckpt["epoch"] == 3
    assert ckpt["provenance"] == [first, {**first, "from_step": 5, "device": "elsewhere"}]  # 1 epoch x 5 steps


@pytest.mark.slow
def test_a_torchrun_run_records_its_number_of_processes(tmp_path, cifar_dir, monkeypatch):
    """Rank 0 of a 2-process job saves 2 processes in the checkpoint, its placement, provenance and metrics."""
    with as_rank(0, 2, tmp_path / "store", monkeypatch):
        assert train.main(run_args(tmp_path, cifar_dir, "--epochs", "1")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    assert ckpt["processes"] == 2 and ckpt["placement"]["processes"] == 2
    assert [entry["processes"] for entry in ckpt["provenance"]] == [2]
    assert [record["processes"] for record in ckpt["metrics"]] == [2]
    assert "x 2 processes)" in provenance.describe(ckpt["provenance"])
