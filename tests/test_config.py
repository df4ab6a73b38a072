"""The one table of flags (config.py): each flag's role, what a resume does with it, and the
readable config.json that a run folder holds beside its checkpoints."""

import json

import pytest

import train
from checkpointing import resumed_config
from cli import UserError
from config import SESSION, as_dict, result_flags, roles
from conftest import run_folder
from experiment import all_experiments, parse_args, parser_defaults
from test_train import load, tiny_args


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_every_flag_of_each_script_has_a_role_in_command_line_order(name):
    """A flag added to a parser but not to its config (or the reverse) fails here; so does a
    config whose order differs from the command line's, which would rename runs."""
    experiment = all_experiments()[name]
    assert list(parser_defaults(experiment)) == list(roles(experiment.config_type))
    config, _ = parse_args(experiment, [])
    assert list(as_dict(config)) == list(parser_defaults(experiment))


def test_the_result_flags_are_the_model_data_split_schedule_and_stopping():
    assert result_flags(train.CifarConfig) == [
        *("arch", "depth", "width", "plain", "z_dim", "shortcut", "init", "schedule"),
        *("epochs", "batch_size", "optimizer", "lr", "weight_decay", "seed", "val_size", "patience", "precise_bn"),
    ]


def test_a_resume_refuses_a_fixed_flag_keeps_the_kept_ones_and_takes_the_session_ones():
    saved, _ = parse_args(train.CIFAR10, ["--depth", "10", "--patience", "3", "--data-dir", "a", "--device", "cpu"])
    same, explicit = parse_args(train.CIFAR10, ["--depth", "10", "--eval-batch-size", "7"])
    resumed = resumed_config(saved, same, explicit)
    assert (resumed.patience, resumed.data_dir) == (3, "a")  # kept: not given again
    assert (resumed.device, resumed.eval_batch_size) == ("auto", 7)  # the resuming command's, default included
    kept, explicit = parse_args(train.CIFAR10, ["--patience", "5", "--data-dir", "b"])
    assert (resumed_config(saved, kept, explicit).patience, resumed_config(saved, kept, explicit).data_dir) == (5, "b")
    other, explicit = parse_args(train.CIFAR10, ["--depth", "16"])
    with pytest.raises(UserError, match="the checkpoint has --depth 10 but 16 was given"):
        resumed_config(saved, other, explicit)
    assert {k for k, role in roles(train.CifarConfig).items() if role == SESSION} >= {"device", "amp", "compile"}


def test_config_json_is_the_configuration_the_run_continues_with(tmp_path, tiny_cifar):
    first = tiny_args(tmp_path, tiny_cifar, "--epochs", "2", "--stop-after", "1")
    assert train.main(first) == 0
    folder = run_folder(train.CIFAR10, first)
    assert json.loads((folder / "config.json").read_text()) == load(folder / "last.pt")["config"]
    assert train.main([*tiny_args(tmp_path, tiny_cifar, "--epochs", "2", "--eval-batch-size", "7"), "-r"]) == 0
    written = json.loads((folder / "config.json").read_text())
    assert written == load(folder / "last.pt")["config"]
    assert (written["eval_batch_size"], written["stop_after"], written["epochs"]) == (7, None, 2)
