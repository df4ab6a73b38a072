"""Carry a dataset folder in parts small enough for one transfer each, checked on arrival.

    python stage_data.py pack ../shared/data/cifar-10-batches-py staged   # staged/part-000..003 + manifest.json
    python stage_data.py unpack staged data                               # -> data/cifar-10-batches-py, all checked

A GPU machine lent to this project takes at most 64 MiB with each command, and CIFAR-10 is
178 MiB: pack it here, send one part per command (a warm machine keeps what earlier commands
left), and unpack it there. Packing is lossless (a tar of the folder, cut into parts); unpacking
checks every part and every file against the SHA-256 sums in the manifest, and writes the
folder only when all of them match.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from checkpointing import atomic_write_text, writable_dir
from cli import ArgumentParser, HelpFormatter, UserError, positive_int, run_cli

MANIFEST = "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(folder: Path, out: Path, part_bytes: int) -> list[Path]:
    """FOLDER as a tar cut into parts of at most PART_BYTES in OUT, with OUT/manifest.json."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(folder.parent)), recursive=False)
    blob = buffer.getvalue()
    parts = [blob[i : i + part_bytes] for i in range(0, len(blob), part_bytes)]
    writable_dir(out, "output folder")
    names = [f"part-{i:03d}" for i in range(len(parts))]
    for name, part in zip(names, parts):
        (out / name).write_bytes(part)
    manifest = {
        "folder": folder.name,
        "parts": {n: sha256(p) for n, p in zip(names, parts)},
        "files": {str(p.relative_to(folder.parent)): sha256(p.read_bytes()) for p in files},
    }
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", out / MANIFEST)
    return [out / name for name in names]


def read_parts(staged: Path) -> tuple[dict, bytes]:
    """The manifest and the joined tar, every part present and matching its checksum."""
    try:
        manifest = json.loads((staged / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{staged / MANIFEST} is not a manifest of stage_data.py ({e})") from None
    missing = [n for n in manifest["parts"] if not (staged / n).is_file()]
    if missing:
        raise UserError(f"{staged} lacks {', '.join(missing)}: send them, then unpack again")
    chunks = []
    for name, digest in manifest["parts"].items():
        chunk = (staged / name).read_bytes()
        if sha256(chunk) != digest:
            raise UserError(f"{staged / name} does not match its checksum: it was damaged on the way; send it again")
        chunks.append(chunk)
    return manifest, b"".join(chunks)


def unpack(staged: Path, dest: Path) -> Path:
    """The folder packed in STAGED, written to DEST/<its name> once every file is checked."""
    manifest, blob = read_parts(staged)
    target = dest / manifest["folder"]
    if target.exists():
        raise UserError(f"{target} exists: move it away first")
    made = [p for p in (dest, *dest.parents) if not p.exists()]
    writable_dir(dest, "destination")
    try:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
            for name, digest in manifest["files"].items():
                path = Path(tmp) / name
                if not path.is_file() or sha256(path.read_bytes()) != digest:
                    raise UserError(f"{name} did not unpack as packed")
            (Path(tmp) / manifest["folder"]).rename(target)
    except BaseException:
        for folder in made:  # a refused unpack leaves no folder behind that it made
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    """python stage_data.py: 0 on success, 1 with one line on stderr for a user error."""
    p = ArgumentParser(prog="stage_data.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="a folder -> parts and a manifest")
    a.add_argument("folder", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument(
        "--part-mib",
        type=positive_int,
        default=50,
        help="the largest part, in MiB (a device command carries 64 MiB, the repository included)",
    )
    b = sub.add_parser("unpack", help="parts and a manifest -> the folder, checked")
    b.add_argument("staged", type=Path)
    b.add_argument("dest", type=Path)
    args = p.parse_args(argv)

    def go() -> None:
        if args.command == "pack":
            parts = pack(args.folder, args.out, args.part_mib * 2**20)
            print(f"wrote {len(parts)} part(s) and {MANIFEST} to {args.out}")
        else:
            print(f"unpacked and checked {unpack(args.staged, args.dest)}")

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
