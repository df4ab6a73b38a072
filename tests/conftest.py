"""Shared fixtures: a tiny CIFAR-10 and a tiny MNIST, in their official file formats."""

from pathlib import Path

import pytest

from data import write_synthetic_cifar as write_fake_cifar
from data import write_synthetic_mnist as write_fake_mnist


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))


def error_line(code: int, capsys) -> str:
    """The single stderr line of a failed in-process command (its exit code must be 1)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]
