"""The project metadata and the pinned requirements say the same thing; the README's set-up works."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_dependencies_are_the_pinned_runtime_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(requirement_lines("requirements.txt"))
    assert project["requires-python"] == ">=3.11"


def test_dev_requirements_add_test_tools_to_the_runtime_ones():
    dev = requirement_lines("requirements-dev.txt")
    assert "-r requirements.txt" in dev
    assert any(line.startswith("pytest==") for line in dev)
    assert any(line.startswith("ruff==") for line in dev)
    runtime = requirement_lines("requirements.txt")
    assert not any(line.startswith(("pytest", "ruff")) for line in runtime)


def readme_first_command() -> str:
    """The README's first shell command (set-up and start), as a user copies it."""
    block = re.search(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return block.group(1).strip()


@pytest.mark.e2e
def test_the_readmes_first_command_gives_a_working_paastis_command(tmp_path):
    command = readme_first_command()
    setup, _, start = command.rpartition(" && ")
    assert start.endswith(".venv/bin/gunicorn app:app")
    checkout = tmp_path / "paastis"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # the repository as a clone has it (the committed files, as in this worktree)
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    ran = subprocess.run(setup, check=False, shell=True, cwd=checkout, env=env, capture_output=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-2000:].decode(errors="replace")
    env["PAASTIS_STATE_DIR"] = str(tmp_path / "state")
    paastis = str(checkout / ".venv/bin/paastis")
    check = subprocess.run([paastis, "check"], check=False, cwd=checkout, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[-1] == "configuration OK" and "demo" in check.stdout
