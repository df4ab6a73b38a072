"""gpu_check.py: its dry run goes through every section on the CPU, so it cannot rot before a GPU runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpu_check
from conftest import HANG, error_line

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dry_run_passes_every_section_and_writes_the_report(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, "gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((out / "report.json").read_text())
    assert [(s["section"], s["status"]) for s in saved["sections"]] == [
        ("tests", "passed"),
        ("bench", "passed"),
        ("syncs", "passed"),
        ("mnist", "passed"),
    ]
    assert saved["environment"]["torch"] == str(torch.__version__)
    text = (out / "report.md").read_text()
    assert "train.py end to end vs bare step" in text and "the paper's Hyper-40-1 schedule" in text
    assert "| hyper | 0.76% | 4,244 |" in text  # Table 7 from the section's runs (named for their 1-epoch budget)
    assert "`mnist-plain-epochs-1-val-size-50-seed1`" in text
    assert "host syncs are checked on CUDA only" in text  # the CPU says what it did not check


@pytest.mark.slow
def test_a_section_cut_at_its_limit_is_reported_and_the_others_still_run(tmp_path, capsys):
    out = tmp_path / "check"
    code = gpu_check.main(["--dry-run", "--out", str(out), "--section-limit", "1"])
    statuses = [s["status"] for s in json.loads((out / "report.json").read_text())["sections"]]
    assert len(statuses) == 4 and "cut at its 1 s limit" in statuses  # all four ran, each within its limit
    assert "did not pass" in error_line(code, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path, capsys):
    assert "no CUDA GPU here" in error_line(gpu_check.main(["--out", str(tmp_path / "check")]), capsys)
    assert not (tmp_path / "check").exists()  # a refused check writes nothing


def reported(out: Path) -> tuple[list[str], list[str]]:
    """The sections that OUT/report.json and OUT/report.md hold now (none before the first is written)."""
    saved = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {"sections": []}
    text = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    return [s["section"] for s in saved["sections"]], [
        s for s in ("tests", "bench", "syncs", "mnist") if f"## {s}:" in text
    ]


def test_the_report_on_disk_holds_every_finished_section_before_the_next_starts(tmp_path, monkeypatch, capsys):
    """When section k+1 starts, report.json and report.md already hold sections 1..k; a failed one stays reported."""
    out, seen = tmp_path / "check", []

    def section(name, command, limit):
        seen.append((name, *reported(out)))
        status = "failed (exit 1)" if name == "bench" else "passed"
        return {"section": name, "status": status, "seconds": 1.0, "command": command[1:], "tail": [f"{name} done"]}

    env = {"torch": "2.14.1", "python": "3.11.7", "device": "a CPU", "commit": "05a27ff", "dirty": False, "cuda": None}
    monkeypatch.setattr(gpu_check, "environment", lambda device: env)
    monkeypatch.setattr(gpu_check, "run_section", section)
    assert "section(s) bench did not pass" in error_line(gpu_check.main(["--dry-run", "--out", str(out)]), capsys)
    names = ["tests", "bench", "syncs", "mnist"]
    assert seen == [(name, names[:k], names[:k]) for k, name in enumerate(names)]
    assert reported(out) == (names, names)
    assert json.loads((out / "report.json").read_text())["sections"][1]["status"] == "failed (exit 1)"
