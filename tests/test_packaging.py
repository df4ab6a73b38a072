"""The model modules install with pip and import from any directory."""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import HANG, REPO

LIBRARY = ["hypernetwork_modules", "resnet_blocks", "primary_net", "target_hypernetwork"]


def test_pyproject_installs_the_model_modules_and_they_exist():
    listed = re.search(r"^py-modules = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert re.findall(r'"([a-z_]+)"', listed) == LIBRARY
    assert all((REPO / f"{name}.py").is_file() for name in LIBRARY)
    assert (
        "-e .[train]" in (REPO / "requirements.txt").read_text().splitlines()
    )  # the README's install installs the project


def test_the_library_needs_torch_alone():
    """`pip install .` brings torch only: the model modules import nothing else outside the standard library."""
    imported = set()
    for name in LIBRARY:
        for node in ast.walk(ast.parse((REPO / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) - set(LIBRARY) == {"torch"}


@pytest.mark.slow
def test_installed_modules_import_from_another_directory(tmp_path):
    """After the README's install (`pip install -r requirements.txt`, which installs this
    project), the library imports outside the clone; the training modules stay private."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import hypernetwork_modules, primary_net, resnet_blocks, target_hypernetwork, importlib.util as u; "
        "net = primary_net.PrimaryNetwork(10, 1); print(len(net.generate()), u.find_spec('engine') is None)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "True"]
