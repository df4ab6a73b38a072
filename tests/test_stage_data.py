"""stage_data.py: a dataset folder in small parts, back whole and checked, or one clear line."""

import json
import tarfile

import stage_data
from conftest import error_line, write_fake_cifar


def test_pack_then_unpack_gives_the_folder_back(tmp_path, capsys):
    data = write_fake_cifar(tmp_path / "data", per_batch=100) / "cifar-10-batches-py"  # 1.8 MB
    assert stage_data.main(["pack", str(data), str(tmp_path / "staged"), "--part-mib", "1"]) == 0
    parts = sorted((tmp_path / "staged").glob("part-*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 2**20 for p in parts)
    assert stage_data.main(["unpack", str(tmp_path / "staged"), str(tmp_path / "there")]) == 0
    copy = tmp_path / "there" / "cifar-10-batches-py"
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in data.iterdir())
    assert all((copy / p.name).read_bytes() == p.read_bytes() for p in data.iterdir())
    assert list((tmp_path / "there").iterdir()) == [copy]  # no temporary folder left beside it


def test_a_damaged_or_missing_part_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = write_fake_cifar(tmp_path / "data", per_batch=100) / "cifar-10-batches-py"  # 1.8 MB
    staged = tmp_path / "staged"
    assert stage_data.main(["pack", str(data), str(staged), "--part-mib", "1"]) == 0
    part = staged / "part-001"
    damaged = bytearray(part.read_bytes())
    damaged[100] ^= 1
    part.write_bytes(bytes(damaged))
    capsys.readouterr()
    line = error_line(stage_data.main(["unpack", str(staged), str(tmp_path / "there")]), capsys)
    assert "part-001 does not match its checksum" in line and not (tmp_path / "there").exists()
    part.unlink()
    line = error_line(stage_data.main(["unpack", str(staged), str(tmp_path / "there")]), capsys)
    assert "lacks part-001" in line and not (tmp_path / "there").exists()
    assert set(json.loads((staged / "manifest.json").read_text())["files"]) == {
        f"cifar-10-batches-py/{p.name}" for p in data.iterdir()
    }


def test_a_file_that_unpacks_other_than_packed_is_one_line_and_writes_nothing(tmp_path, capsys):
    """A file whose SHA-256 differs from the manifest's (its parts intact) stops unpack, and no folder is left."""
    data = write_fake_cifar(tmp_path / "data", per_batch=10) / "cifar-10-batches-py"
    staged = tmp_path / "staged"
    assert stage_data.main(["pack", str(data), str(staged)]) == 0
    manifest = json.loads((staged / "manifest.json").read_text())
    part = staged / "part-000"
    with tarfile.open(part) as tar:
        start = tar.getmember("cifar-10-batches-py/data_batch_1").offset_data
    changed = bytearray(part.read_bytes())
    changed[start + 100] ^= 1  # a byte of data_batch_1's contents
    part.write_bytes(bytes(changed))
    manifest["parts"]["part-000"] = stage_data.sha256(bytes(changed))  # the part itself checks out
    (staged / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    line = error_line(stage_data.main(["unpack", str(staged), str(tmp_path / "there")]), capsys)
    assert line == "error: cifar-10-batches-py/data_batch_1 did not unpack as packed"
    assert not (tmp_path / "there").exists()
    (tmp_path / "mine").mkdir()
    error_line(stage_data.main(["unpack", str(staged), str(tmp_path / "mine")]), capsys)
    assert list((tmp_path / "mine").iterdir()) == []  # a destination that was there stays as it was
