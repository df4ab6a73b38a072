"""export.py: a checkpoint's hypernetwork-generated kernels written out as a plain network."""

import pytest
import torch

import export
import train
from cli import UserError
from conftest import only_run
from primary_net import num_parameters
from test_train import run_args


@pytest.mark.slow
def test_export_cli_round_trip(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "1")
    assert train.main(args) == 0
    best = only_run(tmp_path / "ck") / "best.pt"
    assert export.main([str(best)]) == 0
    out = best.with_name("best-plain.pt")
    printed = capsys.readouterr().out
    assert "79,802 parameters" in printed and str(out) in printed
    model = export.model_from_checkpoint(torch.load(best, weights_only=True)).eval()
    plain = export.load_exported(out).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    assert f"plain weights: {num_parameters(plain):,} parameters" in printed


def test_export_refuses_plain_and_foreign_files(tmp_path, capsys):
    foreign = tmp_path / "x.pt"
    torch.save({"a": 1}, foreign)
    assert export.main([str(foreign)]) == 1
    assert "not a checkpoint written by this train.py" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a file written by export.py"):
        export.load_exported(foreign)
