"""Where a run ran: the facts a result needs beside it to be compared or reproduced.

    collect(device, processes)   {"torch", "python", "device", "threads", "processes", "commit", "dirty"}
    describe(entries)            one short line for tables: "torch 2.14.1, AMD EPYC 7B13 (2 threads), 05a27ff"
    same_place(a, b)             whether two entries differ only in the step they start at

A run keeps a list of these, one per session that trained it (a resumed run may move
to another machine); checkpoints and archived runs carry the list.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

UNKNOWN = "unknown"  # what an archived run that predates provenance records
REPO = Path(__file__).resolve().parent


def device_model(device: torch.device) -> str:
    """The GPU's name and compute capability, or the processor's name as Linux gives it."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def git_state() -> tuple[str, bool | str]:
    """(commit, whether tracked files differ from it) of the clone this code runs from;
    UNKNOWN for both outside a git clone or without git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN


def collect(device: torch.device, processes: int) -> dict:
    """Where this process computes: torch, Python, device model, threads, processes, commit."""
    commit, dirty = git_state()
    return {
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": device_model(device),
        "threads": torch.get_num_threads(),
        "processes": processes,
        "commit": commit,
        "dirty": dirty,
    }


def unknown() -> dict:
    """The provenance of a run that did not record it."""
    return {key: UNKNOWN for key in ("torch", "python", "device", "threads", "processes", "commit", "dirty")}


def same_place(a: dict, b: dict) -> bool:
    """Whether two entries describe the same software on the same kind of machine."""
    return {k: v for k, v in a.items() if k != "from_step"} == {k: v for k, v in b.items() if k != "from_step"}


def describe(entries: list[dict]) -> str:
    """A short form of a run's provenance: each distinct place once, in order."""

    def short(e: dict) -> str:
        if all(v == UNKNOWN for k, v in e.items() if k != "from_step"):
            return UNKNOWN
        commit = (
            e["commit"][:7] + ("+dirty" if e["dirty"] is True else "") if e["commit"] != UNKNOWN else "commit unknown"
        )
        threads = f"{e['threads']} thread{'s' if e['threads'] != 1 else ''}"
        where = f"{e['device']} ({threads}" + (f" x {e['processes']} processes)" if e["processes"] != 1 else ")")
        return f"torch {e['torch']}, {where}, {commit}"

    return ", then ".join(dict.fromkeys(map(short, entries))) or UNKNOWN
