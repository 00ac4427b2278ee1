"""The project metadata and the pinned requirements say the same thing."""

import tomllib
from pathlib import Path

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
