"""stage_data.py: a dataset folder in small parts, back whole and checked, or one clear line."""

import json

from conftest import error_line, write_fake_cifar
import stage_data


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
    assert set(json.loads((staged / "manifest.json").read_text())["files"]) == {f"cifar-10-batches-py/{p.name}" for p in data.iterdir()}
