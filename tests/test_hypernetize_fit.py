"""hypernetize(model, init="fit"): the z's and hypernetworks set from the model's own weights."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import write_synthetic_cifar
from hypernetwork_modules import HyperNetwork, KernelBank, hypernetize
from seed_stats import mean_sd
from test_target_hypernetwork import load_example


class WholeTiles(nn.Module):
    """Channels that are multiples of 16: no tile is cropped. Two 3x3 convs and a hidden linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.hidden = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(F.relu(self.stem(x))))))
        return self.fc(F.relu(self.hidden(h.mean(dim=(2, 3)))))


def generated_by_a_hypernetwork(z_dim: int) -> nn.Module:
    """A plain model whose weights a z_dim hypernetwork made, every one of its terms non-zero."""
    torch.manual_seed(0)
    source = hypernetize(WholeTiles(), z_dim=z_dim)
    with torch.no_grad():
        for bank in source.banks.values():
            nn.init.normal_(bank.hypernet.w_in.bias)
            nn.init.normal_(bank.hypernet.w_out.bias)
    return source.to_plain()


def test_a_model_a_hypernetwork_made_comes_back_exactly():
    plain = generated_by_a_hypernetwork(z_dim=4)
    fitted = hypernetize(plain, z_dim=4, init="fit")
    assert set(fitted.fit_errors) == {"16x16x3x3", "16x16x1x1"}
    assert max(fitted.fit_errors.values()) < 1e-10
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fitted(x), plain(x), rtol=1e-4, atol=1e-5)


def residual(rows: torch.Tensor, k: int) -> float:
    """The squared error the best K-dim affine subspace leaves: the centered rows' trailing singular values."""
    return float(torch.linalg.svdvals(rows - rows.mean(0))[k:].square().sum())


def test_the_fit_error_is_the_two_svd_residuals():
    torch.manual_seed(1)
    kernels = [torch.randn(32, 16, 3, 3), torch.randn(48, 32, 3, 3)]  # 2 + 6 whole tiles
    bank = KernelBank([k.shape for k in kernels], HyperNetwork(z_dim=4))
    error = bank.fit_(kernels)
    tiles = torch.cat(  # (rows, out, cols, in, f, f) -> (rows*cols, in, out, f, f): the slices of each tile
        [
            k.double().unflatten(0, (-1, 16)).unflatten(2, (-1, 16)).permute(0, 2, 3, 1, 4, 5).flatten(0, 1)
            for k in kernels
        ]
    ).flatten(2)  # (8 tiles, 16 slices, 16*3*3)
    slices = tiles.flatten(0, 1)
    _, _, vh = torch.linalg.svd(slices - slices.mean(0), full_matrices=False)
    coordinates = ((tiles - slices.mean(0)) @ vh[:4].t()).flatten(1)  # (8, 16*4)
    expected = residual(slices, 4) + residual(coordinates, 4)
    total = sum(float(k.double().square().sum()) for k in kernels)
    assert math.isclose(error * total, expected, rel_tol=1e-9)
    made = bank()
    measured = sum(float((m.double() - k.double()).square().sum()) for m, k in zip(made, kernels))
    assert math.isclose(measured, expected, rel_tol=1e-5)  # float32 parameters


def test_a_cropped_model_reports_the_error_of_its_own_weights():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 24, 3), nn.Conv2d(24, 40, 3), nn.Conv2d(40, 20, 3))  # every tile grid cropped
    net = hypernetize(model, z_dim=8, init="fit")
    original = [model[1].weight, model[2].weight]
    error = sum(float((k - w).square().sum()) for k, w in zip(net.generate(), original))
    relative = error / sum(float(w.square().sum()) for w in original)
    assert math.isclose(net.fit_errors["16x16x3x3"], relative, rel_tol=1e-4)
    assert 0 < relative < 1
    assert "fit to the model's weights, error" in net.summary()


def test_the_default_init_draws_as_a_kernel_bank_does_and_says_so():
    torch.manual_seed(3)
    model = WholeTiles()
    stds = {n: model.get_submodule(n).weight.std().item() for n in ("conv1", "conv2", "hidden")}
    torch.manual_seed(4)
    net = hypernetize(model, z_dim=4)
    torch.manual_seed(4)
    conv = KernelBank([(32, 16, 3, 3), (32, 32, 3, 3)], HyperNetwork(4), z_stds=[stds["conv1"], stds["conv2"]])
    linear = KernelBank([(32, 32, 1, 1)], HyperNetwork(4, f_size=1), z_stds=[stds["hidden"]])
    expected = {**conv.state_dict(), **{f"1x1.{k}": v for k, v in linear.state_dict().items()}}
    got = {
        **net.banks["16x16x3x3"].state_dict(),
        **{f"1x1.{k}": v for k, v in net.banks["16x16x1x1"].state_dict().items()},
    }
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert net.fit_errors == {} and "own values are not used" in net.summary()


def test_an_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be 'random' or 'fit'"):
        hypernetize(WholeTiles(), init="pretrained")  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_fit_start_example_records_every_model_of_every_seed(tmp_path):
    write_synthetic_cifar(tmp_path / "data", per_batch=20, test_size=20)
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--seeds", "0", "1"]
    record = load_example("fit_start").main(argv + ["--pretrain-steps", "2", "--finetune-steps", "1"])
    assert [r["seed"] for r in record["seeds"]] == [0, 1]
    for row in record["seeds"]:
        assert row["fit"]["parameters"] == row["random"]["parameters"] < row["stored"]["parameters"]
        assert all(0 <= row[m][w] <= 1 for m in ("stored", "fit", "random") for w in ("start", "finetuned"))
        assert set(row["fit_error"]) == {"16x16x3x3"} and 0 < row["fit_error"]["16x16x3x3"] < 1
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == record
    assert (tmp_path / "out" / "fit_start.png").stat().st_size > 1000


def test_the_library_docs_quote_the_archived_fit_start_run():
    """docs/library.md's init="fit" table is results/fit_start.json's seeds, mean ± sd: nothing copied by hand."""
    repo = Path(__file__).resolve().parents[1]
    seeds = json.loads((repo / "results" / "fit_start.json").read_text())["seeds"]
    docs = (repo / "docs" / "library.md").read_text()
    for model in ("stored", "fit", "random"):
        cells = [f"{seeds[0][model]['parameters']:,}"]
        for when in ("start", "finetuned"):
            cells.append(mean_sd([100 * row[model][when] for row in seeds]))
        assert " | ".join(cells) in docs, (model, cells)
    errors = ", ".join(f"{100 * row['fit_error']['16x16x3x3']:.1f}%" for row in seeds)
    assert errors in docs.replace(" and ", ", ")
