"""compare.py and diagrams.py on tiny real runs: the tables, the archive, bad runs, the figures."""

import dataclasses
import errno
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch

import checkpointing
import compare
import diagrams
import mnist
import provenance
import run_records
import runner
import seed_stats
import tables
import train
from checkpointing import load_checkpoint
from cli import UserError
from conftest import error_line, saved_model, write_archived_run
from experiment import SCALE_INITS, parse_args
from primary_net import PrimaryNetwork

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def runs(tmp_path_factory, cifar_dir, mnist_dir) -> SimpleNamespace:
    """Four runs of 2 epochs by the real scripts (CIFAR-10 depth 10 hyper and plain, MNIST
    hyper and plain) under `checkpoints`, the kernels fit started the CIFAR hyper run with,
    and under `extra` two hand-made runs that match rows of the paper's Table 2."""
    root = tmp_path_factory.mktemp("results")
    checkpoints = root / "checkpoints"
    common = [
        "--epochs",
        "2",
        "--val-size",
        "20",
        "--no-download",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint-dir",
        str(checkpoints),
        "--log-dir",
        str(root / "tensorboard"),
    ]
    cifar = [*common, "--depth", "10", "--batch-size", "32", "--data-dir", str(cifar_dir)]
    started = {}

    def build_and_record(config: dict) -> PrimaryNetwork:
        model = train.build_model(config)
        started["kernels"] = [k.detach().clone() for k in model.generate()]
        return model

    # Named by their models alone (their default names also spell out --epochs, --val-size, ...).
    assert (
        runner.main(
            dataclasses.replace(train.CIFAR10, build_model=build_and_record), [*cifar, "--run-name", "hyper-10-1"]
        )
        == 0
    )
    assert train.main([*cifar, "--plain", "--run-name", "wrn-10-1"]) == 0
    mnist_args = [*common, "--batch-size", "50", "--data-dir", str(mnist_dir)]
    assert mnist.main([*mnist_args, "--run-name", "mnist-hyper"]) == 0
    assert mnist.main([*mnist_args, "--plain", "--run-name", "mnist-plain"]) == 0

    # A Hyper-40-1 checkpoint: a real one with the configuration, weights and results of a
    # paper-schedule run at epoch 8 (351 steps an epoch).
    extra = root / "extra"
    ckpt = torch.load(checkpoints / "hyper-10-1" / "last.pt", weights_only=True)
    ckpt.update(
        config={**ckpt["config"], "depth": 40, "epochs": None, "run_name": "hyper-40-1", "device": "auto"},
        model=PrimaryNetwork(40, 1).state_dict(),
        epoch=8,
        step=2808,
        elapsed_seconds=3725.5,
        best={"epoch": 7, "step": 2457, "val_error": 9.12, "test_error": 8.34},
        num_parameters=96_602,
    )
    (extra / "hyper-40-1").mkdir(parents=True)
    torch.save(ckpt, extra / "hyper-40-1" / "last.pt")
    # A WRN-40-2 run in the archived format, trained elsewhere.
    config = {
        **ckpt["config"],
        "depth": 40,
        "width": 2,
        "plain": True,
        "epochs": 20,
        "batch_size": 128,
        "run_name": "wrn-40-2",
    }
    summary = {
        "format": run_records.ARCHIVE_FORMAT,
        "config": config,
        "best": {"epoch": 19, "step": 6669, "val_error": 6.5, "test_error": 6.25},
        "epoch": 20,
        "step": 7020,
        "elapsed_seconds": 59.9,
        "device": "cuda x4",
        "num_parameters": 2_235_530,
        "provenance": [{"from_step": 0, **provenance.unknown()}],
    }
    (extra / "wrn-40-2").mkdir()
    (extra / "wrn-40-2" / "run.json").write_text(json.dumps(summary))
    (extra / "wrn-40-2" / "metrics.jsonl").write_text("")  # its metrics not kept
    return SimpleNamespace(checkpoints=checkpoints, extra=extra, init_kernels=started["kernels"])


def best(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["best"]


def table_rows(markdown: str) -> dict[str, list[list[str]]]:
    """Table rows by their first cell: {first cell: [cells of each such row]}."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| model") and not line.startswith("| configuration"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], []).append(cells)
    return rows


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def write_report(runs_dirs: list[Path], out: Path, *extra: str) -> str:
    assert compare.main(["--runs", *map(str, runs_dirs), "--out", str(out), *extra]) == 0
    return out.read_text()


# ----------------------------------------------------------------------------- compare.py


@pytest.mark.slow
def test_tables_hold_the_runs_results_and_live_counts(runs, tmp_path, capsys):
    out = tmp_path / "results" / "results.md"
    text = write_report([runs.checkpoints, runs.extra], out)
    assert capsys.readouterr().out == text
    assert text.startswith(f"Generated by `python compare.py --runs {runs.checkpoints} {runs.extra} --out {out}`")
    rows = table_rows(text)

    no_run = ["no run"] + [""] * 9
    assert rows["wrn-40-1"] == [["wrn-40-1", "6.73%", "0.563M", "562,762", *no_run]]
    assert rows["hyper-40-2"] == [["hyper-40-2", "7.23%", "0.148M", "147,610", *no_run]]
    where = provenance.describe(load_checkpoint(runs.extra / "hyper-40-1" / "last.pt")["provenance"])
    assert where.startswith(f"torch {torch.__version__}, ")  # the run that made the fixture's checkpoint: this one
    assert rows["hyper-40-1"] == [
        [
            "hyper-40-1",
            "8.02%",
            "0.097M",
            "96,602",
            "`hyper-40-1`",
            "8.34%",
            "9.12%",
            "7",
            "8 of 1,915 (paper schedule)",
            "2,808 x 32",
            "unfinished",
            "cpu",
            "01:02:05",
            where,
        ]
    ]
    assert rows["wrn-40-2"] == [
        [
            "wrn-40-2",
            "5.66%",
            "2.236M",
            "2,235,530",
            "`wrn-40-2`",
            "6.25%",
            "6.50%",
            "19",
            "20 of 20",
            "7,020 x 128",
            "finished",
            "cuda x4",
            "00:00:59",
            "unknown",
        ]
    ]

    # Depth 10 is no row of Table 2: those runs are listed below it, with their own results.
    for name, configuration in (
        ("hyper-10-1", "hyper-10-1, z_dim 64, shortcut pad"),
        ("wrn-10-1", "wrn-10-1, z_dim 64, shortcut pad"),
    ):
        (row,) = rows[configuration]
        result = best(runs.checkpoints / name)
        assert row[2:10] == [
            f"`{name}`",
            f"{result['test_error']:.2f}%",
            f"{result['val_error']:.2f}%",
            str(result["epoch"]),
            "2 of 2",
            "10 x 32",
            "finished",
            "cpu",
        ]

    for model, name, paper, layer2, total in (
        ("normal", "mnist-plain", ["0.72%", "12,544"], "12,544", "21,210"),
        ("hyper", "mnist-hyper", ["0.76%", "4,244"], "4,244", "12,910"),
    ):
        (row,) = rows[model]
        result = best(runs.checkpoints / name)
        assert row[:8] == [
            model,
            *paper,
            layer2,
            total,
            f"`{name}`",
            f"{result['test_error']:.2f}%",
            f"{result['val_error']:.2f}%",
        ]
        assert row[9:13] == ["2 of 2", "4 x 50", "finished", "cpu"]
    assert (
        f"Rows from `{runs.checkpoints / 'mnist-plain'}`, `{runs.checkpoints / 'mnist-hyper'}`; trained on cpu." in text
    )


@pytest.mark.slow
def test_archive_reproduces_the_tables_from_small_files(runs, tmp_path, capsys):
    archive = tmp_path / "archive"
    first = write_report([runs.checkpoints, runs.extra], tmp_path / "a.md", "--archive", str(archive))
    again = write_report([archive], tmp_path / "b.md")
    assert table_lines(again) == table_lines(first) and len(table_lines(first)) == 14
    assert sorted(p.name for p in archive.iterdir()) == [
        "hyper-10-1",
        "hyper-40-1",
        "mnist-hyper",
        "mnist-plain",
        "wrn-10-1",
        "wrn-40-2",
    ]
    assert "archived 6 run(s)" in capsys.readouterr().err

    for name in ("hyper-10-1", "wrn-10-1", "mnist-hyper", "mnist-plain"):
        source, copy = runs.checkpoints / name, archive / name
        assert (copy / "metrics.jsonl").read_text() == (source / "metrics.jsonl").read_text()
        summary = json.loads((copy / "run.json").read_text())
        ckpt = torch.load(source / "last.pt", weights_only=True)
        assert set(summary) == {
            "format",
            "config",
            "best",
            "epoch",
            "step",
            "elapsed_seconds",
            "device",
            "num_parameters",
            "provenance",
        }
        assert summary["best"] == ckpt["best"] and summary["device"] == "cpu" and summary["step"] == ckpt["step"]
        assert summary["provenance"] == ckpt["provenance"] and summary["format"] == run_records.ARCHIVE_FORMAT
        # No path of the machine that made it: the flags naming its files are left out, nothing else is.
        paths = {"data_dir", "checkpoint_dir", "log_dir", "resume"}
        assert summary["config"] == {k: v for k, v in ckpt["config"].items() if k not in paths}
        assert str(runs.checkpoints) not in (copy / "run.json").read_text()
        bank = {k: v for k, v in ckpt["model"].items() if k.startswith("kernel_bank.")}
        if name.startswith("wrn") or name.endswith("plain"):
            assert not bank and not (copy / "kernel_bank.pt").exists()
        else:
            saved = torch.load(copy / "kernel_bank.pt", weights_only=True)
            assert bank and saved.keys() == bank.keys() and all(torch.equal(saved[k], bank[k]) for k in bank)
            assert (copy / "kernel_bank.pt").stat().st_size < (source / "last.pt").stat().st_size / 2

    # The figures' kernels come out the same from the archive as from the checkpoint.
    from_archive = diagrams.layer_kernels(run_records.read_run(archive / "hyper-10-1"))
    from_checkpoint = diagrams.layer_kernels(run_records.read_run(runs.checkpoints / "hyper-10-1"))
    assert torch.equal(from_archive.init, from_checkpoint.init) and torch.equal(
        from_archive.trained, from_checkpoint.trained
    )


@pytest.mark.slow
def test_archive_on_a_full_disk_is_one_line_and_keeps_the_older_copy(runs, tmp_path, capsys, monkeypatch):
    archive = tmp_path / "archive"
    write_report([runs.checkpoints], tmp_path / "a.md", "--archive", str(archive))
    before = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    capsys.readouterr()

    fsyncs = []
    real_fsync = checkpointing.os.fsync

    def full_disk_after(n):
        def fsync(fd):
            fsyncs.append(fd)
            if len(fsyncs) > n:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        return fsync

    # Full from the start: one line naming the report, and nothing written at all.
    monkeypatch.setattr(checkpointing.os, "fsync", full_disk_after(0))
    code = compare.main(["--runs", str(runs.checkpoints), "--out", str(tmp_path / "b.md"), "--archive", str(archive)])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 1 and len(err) == 1 and err[0].startswith(f"error: cannot write {tmp_path / 'b.md'}: the disk is full")
    )
    assert not (tmp_path / "b.md").exists()
    # Full once the report is written (its file and folder fsynced): the archive is left as it was.
    fsyncs.clear()
    monkeypatch.setattr(checkpointing.os, "fsync", full_disk_after(2))
    code = compare.main(["--runs", str(runs.checkpoints), "--out", str(tmp_path / "b.md"), "--archive", str(archive)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[0].startswith("wrote ") and len(err) == 2
    assert err[1].startswith("error: cannot write ") and "the disk is full" in err[1] and str(archive) in err[1]
    assert {
        p: p.read_bytes() for p in archive.rglob("*") if p.is_file()
    } == before  # every file whole, no temporary left


@pytest.mark.slow
def test_archive_never_replaces_another_run_of_the_same_name(runs, tmp_path, capsys):
    archive = tmp_path / "archive"
    write_report([runs.checkpoints], tmp_path / "a.md", "--archive", str(archive))
    write_report([runs.checkpoints], tmp_path / "a.md", "--archive", str(archive))  # the same runs again: an update
    summary = archive / "mnist-hyper" / "run.json"
    other = json.loads(summary.read_text())
    other["config"]["seed"] = 7  # another run that was also named mnist-hyper
    summary.write_text(json.dumps(other))
    before = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = compare.main(["--runs", str(runs.checkpoints), "--out", str(tmp_path / "b.md"), "--archive", str(archive)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and line.startswith("error: ") and "holds another run named mnist-hyper" in line
    assert {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before  # nothing written
    assert not (tmp_path / "b.md").exists()  # the report neither: the line says nothing was archived


@pytest.mark.slow
def test_plain_runs_of_either_scale_init_are_one_configuration(runs):
    for name, hyper in (("mnist-plain", False), ("mnist-hyper", True), ("wrn-10-1", False), ("hyper-10-1", True)):
        run = run_records.read_run(runs.checkpoints / name)
        init = next(i for i in SCALE_INITS if i != run.config["init"])  # the scale init that is not the default
        other = dataclasses.replace(run, config={**run.config, "init": init, "seed": 1})
        assert run_records.departures(run) == {}
        assert run_records.departures(other) == ({"init": init} if hyper else {}), name
        assert len(seed_stats.seed_groups([run, other])) == (2 if hyper else 1), name


@pytest.mark.slow
def test_unreadable_runs_are_skipped_with_one_warning_each(runs, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs.checkpoints / "mnist-hyper", root / "good")
    for name, filename, content in (
        ("garbage", "last.pt", b"not a checkpoint"),
        ("bad-json", "run.json", b"{not json"),
        (
            "incomplete",
            "run.json",
            json.dumps({"format": run_records.ARCHIVE_FORMAT, "config": {"plain": True}}).encode(),
        ),
        ("older", "run.json", json.dumps({"config": {"plain": True}}).encode()),
    ):
        (root / name).mkdir()
        (root / name / filename).write_bytes(content)
    (root / "foreign").mkdir()
    torch.save({"hello": 1}, root / "foreign" / "last.pt")
    (root / "no-run-here").mkdir()

    text = write_report([root], tmp_path / "results.md")
    warnings = capsys.readouterr().err.splitlines()[:-1]  # the last line says where the report went
    assert len(warnings) == 5 and all(w.startswith("warning: skipped ") for w in warnings)
    for name in ("garbage", "bad-json", "incomplete", "foreign", "older"):
        assert sum(str(root / name) in w for w in warnings) == 1, name
    assert "lacks best, epoch" in " ".join(warnings)
    (older,) = [w for w in warnings if str(root / "older") in w]
    assert f"archive format None, this code reads '{run_records.ARCHIVE_FORMAT}'" in older and "git log" in older
    (row,) = table_rows(text)["hyper"]
    assert row[5] == "`mnist-hyper`" and row[6] == f"{best(root / 'good')['test_error']:.2f}%"


@pytest.mark.slow
def test_user_errors_are_one_line(runs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(compare.main(["--runs", str(runs.checkpoints), "--out", str(blocker / "results.md")]), capsys)
    assert f"cannot write {blocker / 'results.md'}" in line
    line = error_line(compare.main(["--runs", str(tmp_path / "nowhere")]), capsys)
    assert "nowhere is not a folder" in line
    line = error_line(diagrams.main(["--runs", str(tmp_path / "nowhere")]), capsys)
    assert "nowhere is not a folder" in line
    line = error_line(diagrams.main(["--runs", str(runs.extra), "--out", str(blocker / "figures")]), capsys)
    assert f"--out folder {blocker / 'figures'} is not writable" in line


def test_budget_cells():
    config = {**vars(parse_args(mnist.MNIST, [])[0]), "experiment": "mnist", "patience": 3}
    run = run_records.Run(
        Path("r"),
        config,
        {"epoch": 5, "step": 275, "val_error": 1.0, "test_error": 0.9},
        epoch=8,
        step=440,
        elapsed_seconds=3725.5,
        num_parameters=12_910,
        device="cpu",
        provenance=[],
        metrics=[],
        kernel_bank={},
    )
    assert tables.run_cells(run)[8:] == ["01:02:05", "unknown"]  # wall time as the trainer prints it; no provenance
    assert tables.stop_status(run) == "early stop (patience 3)"
    assert tables.stop_status(dataclasses.replace(run, epoch=7, step=385)) == "unfinished"
    assert tables.stop_status(dataclasses.replace(run, epoch=100, step=5500)) == "finished"


def test_help_names_every_option(capsys):
    for main in (compare.main, diagrams.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = capsys.readouterr().out
        assert "--runs DIR [DIR ...]" in text and "default: checkpoints" in text and "--out" in text
    assert "--archive DIR" in compare.build_parser().format_help()


# ----------------------------------------------------------------------------- diagrams.py


def assert_picture(path: Path) -> None:
    """A real PNG, and not a blank one."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image.std() > 0.05 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50


@pytest.mark.slow
def test_diagrams_draws_every_figure(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert diagrams.main(["--runs", str(runs.checkpoints), "--out", str(out)]) == 0
    names = [
        "architecture.png",
        "bn_lag.png",
        "curves_cifar.png",
        "curves_mnist.png",
        "kernels_hyper-10-1.png",
        "kernels_mnist-hyper.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == names
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line for line in lines if not line.startswith("note: ")) == [str(out / name) for name in names]
    assert [line for line in lines if line.startswith("note: ")] == [  # these runs are all of the paper's protocol
        "note: no runs of CIFAR-10, torchvision models with metrics.jsonl: curves_torchvision.png not drawn",
        "note: no runs of MNIST, the author's notebook protocol with metrics.jsonl: curves_mnist_notebook.png not drawn",
        "note: no runs of MNIST hyper, the paper's protocol with metrics.jsonl of more than one --init: "
        "curves_mnist_init.png not drawn",
    ]
    for name in names:
        assert_picture(out / name)
    lagging = diagrams.bn_lag_runs(
        run_records.find_runs([runs.checkpoints])
    )  # the CIFAR runs: MNIST's nets have no BatchNorm
    assert [run.name for run in lagging] == ["hyper-10-1", "wrn-10-1"]
    panels = diagrams.draw_bn_lag(lagging, "t").axes
    assert [ax.get_title() for ax in panels] == ["hyper-10-1", "wrn-10-1"] and len(panels[0].get_lines()) == 3


def test_diagrams_without_runs_draws_the_architecture_only(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert diagrams.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "figures")]) == 0
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["architecture.png"]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 5 and "curves_cifar.png not drawn" in notes[0] and "curves_torchvision.png" in notes[1]
    assert "curves_mnist.png" in notes[2]


@pytest.mark.slow
def test_kernels_start_where_fit_started_and_end_as_trained(runs):
    for name, kernels_at_start in (("hyper-10-1", runs.init_kernels), ("mnist-hyper", None)):
        run = run_records.read_run(runs.checkpoints / name)
        rng = torch.get_rng_state()
        kernels = diagrams.layer_kernels(run)
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is left alone
        ckpt = load_checkpoint(runs.checkpoints / name / "last.pt")
        model = saved_model(ckpt["config"])
        model.load_state_dict(ckpt["model"])
        assert torch.equal(kernels.trained, model.generate()[0].detach())
        assert not torch.allclose(kernels.init, kernels.trained)
        if kernels_at_start is not None:  # recorded inside runner.fit, right after it built the model
            assert torch.equal(kernels.init, kernels_at_start[0])
    assert kernels.init.shape == (16, 16, 7, 7) and kernels.tile == (16, 16)
    with pytest.raises(UserError, match="kernel bank does not fit"):
        diagrams.layer_kernels(dataclasses.replace(run, kernel_bank={}))


def test_mosaic_puts_slice_o_i_at_row_o_column_i():
    kernel = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    image = diagrams.mosaic(kernel)
    assert image.shape == (2 * 3 - 1, 3 * 3 - 1)
    for o in range(2):
        for i in range(3):
            assert np.array_equal(image[3 * o : 3 * o + 2, 3 * i : 3 * i + 2], kernel[o, i].numpy())
    assert np.isnan(image[2]).all() and np.isnan(image[:, 2]).all() and np.isnan(image[:, 5]).all()


# ----------------------------------------------------------------------------- runs that differ only in z_dim


def archived_hyper_40_1(folder: Path, z_dim: int, test_error: float, **flags) -> None:
    """An archived Hyper-40-1 run (run.json) under its default name, identical but for z_dim (and FLAGS)."""
    best = {"epoch": 19, "step": 6669, "val_error": test_error + 1, "test_error": test_error}
    write_archived_run(folder, best, 20, 7020, **{"z_dim": z_dim, "epochs": 20, "run_name": "hyper-40-1", **flags})


@pytest.mark.parametrize("z64_first", [True, False])
def test_runs_of_different_z_dim_stay_apart(z64_first, tmp_path, capsys):
    """Two Hyper-40-1 runs, the same but for --z-dim, both named hyper-40-1 (the default
    name) in two folders: both are reported, each in a row of its own, and only the
    z_dim 64 one (the paper's N_z) sits in the paper's Hyper-40-1 row."""
    archived_hyper_40_1(tmp_path / "z64" / "hyper-40-1", 64, 11.0)
    archived_hyper_40_1(tmp_path / "z16" / "hyper-40-1", 16, 22.0)
    roots = [tmp_path / "z64", tmp_path / "z16"]
    text = write_report(roots if z64_first else roots[::-1], tmp_path / "results.md")
    rows = table_rows(text)
    (paper_row,) = rows["hyper-40-1"]
    assert paper_row[4:6] == ["`hyper-40-1`", "11.00%"]
    (other,) = rows["hyper-40-1, z_dim 16, shortcut pad"]
    assert other[2:4] == ["`hyper-40-1`", "22.00%"]
    assert "22.00%" not in " ".join(paper_row) and "11.00%" not in " ".join(other)
    assert "skipped" not in capsys.readouterr().err
    # The same run found twice (an archived copy) is still read once.
    shutil.copytree(tmp_path / "z64" / "hyper-40-1", tmp_path / "copy" / "hyper-40-1")
    text = write_report([*roots, tmp_path / "copy"], tmp_path / "again.md")
    assert len(table_rows(text)["hyper-40-1"]) == 1 and len(table_rows(text)["hyper-40-1, z_dim 16, shortcut pad"]) == 1
    assert "note: skipped" in capsys.readouterr().err


def test_a_run_with_another_init_is_not_a_paper_row(tmp_path):
    archived_hyper_40_1(tmp_path / "runs" / "hyper-40-1", 64, 11.0)
    archived_hyper_40_1(
        tmp_path / "runs" / "hyper-40-1-init-scale-in-hypernet",
        64,
        9.0,
        init="scale-in-hypernet",
        run_name="hyper-40-1-init-scale-in-hypernet",
    )
    rows = table_rows(write_report([tmp_path / "runs"], tmp_path / "results.md"))
    (paper_row,) = rows["hyper-40-1"]
    assert paper_row[4:6] == ["`hyper-40-1`", "11.00%"]
    (other,) = rows["hyper-40-1, z_dim 64, shortcut pad, init scale-in-hypernet"]
    assert other[2:4] == ["`hyper-40-1-init-scale-in-hypernet`", "9.00%"]


def test_runs_of_two_budgets_never_share_a_seed_group(tmp_path):
    """Seeds pool only when every setting that changes the result is equal: the budget, and
    precise BN, split them; where they ran does not."""

    def archived(name, error, **flags):
        write_archived_run(
            tmp_path / name, {"epoch": 1, "step": 351, "val_error": error, "test_error": error}, 1, 351, **flags
        )
        return run_records.read_run(tmp_path / name)

    runs = [
        archived("a", 20.0, seed=0, epochs=10),
        archived("b", 22.0, seed=1, epochs=10, device="cpu", compile=True),
        archived("c", 80.0, seed=2, epochs=1),
        archived("d", 21.0, seed=3, epochs=10, precise_bn=0),
        archived("e", 20.5, seed=4, epochs=10, lr=0.002),  # the lr hyper's schedule gives it anyway
        archived("f", 30.0, seed=5, epochs=10, lr=0.01),
    ]
    assert [[run.name for run in group] for group in seed_stats.seed_groups(runs)] == [
        ["a", "b", "e"],
        ["c"],
        ["d"],
        ["f"],
    ]


@pytest.mark.slow
def test_a_run_stopped_in_its_first_epoch_is_noted_not_warned(runs, tmp_path, capsys):
    ckpt = torch.load(runs.checkpoints / "hyper-10-1" / "last.pt", weights_only=True)
    ckpt.update(epoch=0, step=3, best={}, metrics=[])
    (tmp_path / "early").mkdir()
    torch.save(ckpt, tmp_path / "early" / "last.pt")
    assert run_records.find_runs([tmp_path]) == []
    err = capsys.readouterr().err
    assert err.startswith(f"note: skipped {tmp_path / 'early'}: stopped in its first epoch")
    assert err.strip().endswith(f"continue with: python train.py -r {tmp_path / 'early' / 'last.pt'}")


def test_results_md_and_the_readme_figures_come_from_the_archived_runs(monkeypatch):
    """results/results.md is what compare.py writes from results/runs, and every figure the
    README's status table quotes is in it: no number is copied by hand out of sync."""
    monkeypatch.chdir(REPO)
    roots = [Path("results/runs")]
    text = tables.report(
        run_records.find_runs(roots), roots, "python compare.py --runs results/runs --out results/results.md"
    )
    assert (REPO / "results" / "results.md").read_text() == text
    readme = (REPO / "README.md").read_text()
    status = readme[readme.index("## Status") : readme.index("\n## ", readme.index("## Status") + 1)]
    figures = re.findall(r"\d+\.\d\d(?: ± \d+\.\d\d)?%|\d{1,3}(?:,\d{3})+", status)
    assert len(figures) >= 10
    assert [f for f in figures if f not in text] == []


def test_the_hyper_plain_gap_over_seeds_with_its_welch_interval(tmp_path):
    """Hyper 20, 21, 22 against plain 18, 18.5, 19: gap 2.5, standard error sqrt(1/3 + 0.25/3),
    Welch's 2.94 degrees of freedom rounded down to 2 (t = 4.303). A plain group of another
    budget is no twin."""

    def archived(name, error, **flags):
        write_archived_run(
            tmp_path / name,
            {"epoch": 10, "step": 3510, "val_error": error, "test_error": error},
            10,
            3510,
            **{"epochs": 10, **flags},
        )
        return run_records.read_run(tmp_path / name)

    runs = [archived(f"h{s}", e, seed=s) for s, e in enumerate((20.0, 21.0, 22.0))]
    runs += [archived(f"p{s}", e, seed=s, plain=True) for s, e in enumerate((18.0, 18.5, 19.0))]
    runs += [archived(f"q{s}", e, seed=s, plain=True, epochs=20) for s, e in enumerate((10.0, 11.0))]
    table = next(t for t in tables.paper_tables() if t.experiment == "cifar10")  # the paper's Table 2
    (row,) = tables.gap_rows(table, runs)
    assert row[2:] == ["3, 3", "+1.29", "+2.50", "0.65", "-0.28 - +5.28"]


def test_the_welch_interval_weighs_each_side_by_its_own_number_of_seeds():
    """Hyper 20, 21 (n 2) against plain 18 to 21 (n 4): Welch-Satterthwaite's 3.69 degrees of freedom, rounded down."""
    hyper, plain = [20.0, 21.0], [18.0, 19.0, 20.0, 21.0]
    a, b = 0.5 / 2, (5 / 3) / 4  # each side's sample variance over its own n
    df = (a + b) ** 2 / (a**2 / 1 + b**2 / 3)
    assert 3 < df < 4
    t = 3.182  # Student's t, 97.5% quantile, 3 degrees of freedom
    gap, se, half = seed_stats.gap_interval(hyper, plain)
    assert gap == pytest.approx(1.0) and se == pytest.approx((a + b) ** 0.5)
    assert half == pytest.approx(t * (a + b) ** 0.5)
    assert (gap - half, gap + half) == pytest.approx((-1.598, 3.598), abs=1e-3)
    swapped_gap, swapped_se, swapped_half = seed_stats.gap_interval(plain, hyper)  # the same Welch df either way round
    assert (swapped_gap, swapped_se, swapped_half) == pytest.approx((-gap, se, half))


def archived_seeds(folder: Path, errors: dict[int, float], **flags) -> list[run_records.Run]:
    """Finished 10-epoch CIFAR-10 runs of FLAGS under FOLDER: for each seed of ERRORS, one with that test error."""
    runs = []
    for seed, error in errors.items():
        run_dir = folder / f"seed{seed}"
        write_archived_run(
            run_dir,
            {"epoch": 10, "step": 3510, "val_error": error, "test_error": error},
            10,
            3510,
            **{"epochs": 10, "seed": seed, **flags},
        )
        runs.append(run_records.read_run(run_dir))
    return runs


def test_a_hyper_run_with_its_own_lr_or_optimizer_has_no_default_plain_twin(tmp_path):
    """Hyper seeds with an --lr or --optimizer other than their schedule's never pair with the default plain seeds."""
    table = next(t for t in tables.paper_tables() if t.experiment == "cifar10")  # the paper's Table 2
    plain = archived_seeds(tmp_path / "plain", {0: 18.0, 1: 19.0}, plain=True)
    default = archived_seeds(tmp_path / "hyper", {0: 20.0, 1: 22.0})
    other_lr = archived_seeds(tmp_path / "hyper-lr", {0: 30.0, 1: 32.0}, lr=0.01)
    other_optimizer = archived_seeds(tmp_path / "hyper-sgd", {0: 40.0, 1: 42.0}, optimizer="sgd")
    assert len(seed_stats.seed_groups(plain + default + other_lr + other_optimizer)) == 4
    for hyper in (other_lr, other_optimizer):
        assert tables.gap_rows(table, plain + hyper) == []
    (row,) = tables.gap_rows(table, plain + other_lr + default + other_optimizer)
    assert row[2:5] == ["2, 2", "+1.29", "+2.50"]


@pytest.mark.parametrize("given_first", [True, False])
def test_hyper_seeds_given_their_schedules_own_lr_pair_with_the_default_plain_twin(given_first, tmp_path):
    """--lr 0.002 on a hyper run is its schedule's lr: its seeds pair with the default plain seeds, in either order."""
    table = next(t for t in tables.paper_tables() if t.experiment == "cifar10")  # the paper's Table 2
    plain = archived_seeds(tmp_path / "plain", {0: 18.0, 1: 19.0}, plain=True)
    given = archived_seeds(tmp_path / "given", {0: 20.0}, lr=0.002)
    left = archived_seeds(tmp_path / "left", {1: 22.0})
    hyper = given + left if given_first else left + given
    (row,) = tables.gap_rows(table, plain + hyper)
    assert row[2:5] == ["2, 2", "+1.29", "+2.50"]
    assert tables.gap_rows(table, plain + archived_seeds(tmp_path / "all-given", {0: 20.0, 1: 22.0}, lr=0.002)) != []


def test_compare_shows_the_test_error_of_the_best_validation_epoch(tmp_path):
    """Bug: compare.py's run table showing the lowest test error over epochs."""
    errors = [(30.0, 31.25), (20.0, 22.5), (25.0, 18.75)]  # (val, test): epoch 2 is best on val, epoch 3 on test
    metrics = [
        {"epoch": e, "step": 5 * e, "val_error": v, "test_error": t, "device": "cpu", "processes": 1}
        for e, (v, t) in enumerate(errors, 1)
    ]
    best = {k: metrics[1][k] for k in ("epoch", "step", "val_error", "test_error")}
    write_archived_run(tmp_path / "runs" / "guard", best, 3, 15, metrics, depth=10, plain=True, epochs=3, batch_size=32)
    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    (row,) = table_rows(out.read_text())["wrn-10-1, z_dim 64, shortcut pad"]
    assert row[2:6] == ["`guard`", "22.50%", "20.00%", "2"]
