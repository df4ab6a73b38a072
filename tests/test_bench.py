"""bench.py: it runs end to end at tiny sizes, and its paired ratio is robust to a slow spell."""

import json

import pytest

import bench


@pytest.mark.slow
def test_bench_runs_with_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = tmp_path / "bench.md"
    assert (
        bench.main(
            [
                "--widths",
                "1",
                "--repeats",
                "1",
                "--batch-size",
                "4",
                "--small-batch",
                "2",
                "--val-size",
                "6",
                "--precise-bn",
                "4",
                "--json",
                str(out),
                "--out",
                str(report),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "batched vs per-tile loop" in table and "train step, batch 4" in table and "end to end" in table
    assert "epoch 1/" not in table and "final:" not in table  # train.py's own lines stay out of the report
    assert report.read_text().strip() == table.strip()
    saved = json.loads(out.read_text())
    assert saved["generation_40_1"]["tiles"] == 242
    assert (saved["amp"], saved["channels_last"]) == ("fp32", False)  # train.py's choices on a CPU
    assert saved["paper_schedule_hours"] == saved["step_40_1_b4"]["hyper_s"] * 672_000 / 3600
    for key in ("step_40_1_b4", "step_40_1_b2"):
        assert saved[key]["ratio"] > 0 and saved[key]["hyper_s"] > 0 and saved[key]["plain_s"] > 0
    assert saved["pipeline"]["train_py_images_per_s"] > 0
    assert saved["hypernetize_resnet18"]["ratio"] > 0 and "hypernetize(ResNet-18) vs ResNet-18" in table
    assert saved["hypernetize_resnet18_eval"]["ratio"] > 0 and "inference forward, batch" in table
    p = saved["precise_bn"]
    assert (p["images"], p["val_images"], p["steps_per_epoch"]) == (4, 6, 45_000 // 4)
    assert p["overhead_s"] > 0 and p["fraction_of_epoch"] == p["overhead_s"] / (p["steps_per_epoch"] * p["step_s"])
    assert "--precise-bn 4 per epoch" in table


def test_paired_ratio_is_the_median_of_per_pair_ratios():
    # pair 2 ran while the machine was slow for both: its ratio is still 1
    fast, slow = [1.0, 10.0, 1.0], [2.0, 10.0, 3.0]
    assert bench.paired(fast, slow) == (1.0, 3.0, 2.0)
