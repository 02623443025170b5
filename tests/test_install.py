"""The install (stack/install.py): what running needs apart from the test and lint tools,
one line per step on the terminal and the tools' full output in the step's log."""

import ast
import os
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from stack import common, install
from stack.common import StackError
from tests.conftest import REPO

# Where the tools' modules may be imported: the tests, and the benchmark's plots
# (bench/report.py, imported only when a benchmark runs: make bench or the suite).
MAY_IMPORT_DEV_TOOLS = ("tests/", "bench/report.py")
NOT_CODE = (".venv", ".stack", ".git", "staticfiles", "test-artifacts", "node_modules")


def requirement_names(path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            names.add(normalized(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0]))
    return names


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def python_files() -> list[Path]:
    found = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [s for s in subfolders if not s.startswith(NOT_CODE)]
        found += [Path(folder) / name for name in names if name.endswith(".py")]
    return sorted(found)


def test_requirements_txt_holds_no_test_or_lint_tool():
    dev_file = REPO / "requirements-dev.txt"
    runtime, dev = requirement_names(REPO / "requirements.txt"), requirement_names(dev_file)
    assert {"pytest", "ruff", "import-linter", "playwright", "matplotlib"} <= dev
    assert not runtime & dev, f"in both requirement files: {sorted(runtime & dev)}"
    # Resolved together, so a tool never moves a runtime pin.
    assert "-r requirements.txt" in dev_file.read_text().splitlines()


def test_app_imports_no_module_of_the_test_and_lint_tools():
    dev_only = requirement_names(REPO / "requirements-dev.txt")
    tool_modules = {
        module
        for module, distributions in packages_distributions().items()
        if any(normalized(d) in dev_only for d in distributions)
    }
    assert {"pytest", "factory", "yaml", "importlinter", "matplotlib"} <= tool_modules
    found = []
    for path in python_files():
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(MAY_IMPORT_DEV_TOOLS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            found += [
                f"{relative}:{node.lineno} {m}" for m in modules if m.split(".")[0] in tool_modules
            ]
    assert not found, "the app needs requirements-dev.txt for: " + ", ".join(found)


@pytest.fixture
def install_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "LOGS", tmp_path)
    return tmp_path / "install"


def test_install_step_prints_one_line_and_keeps_the_output_in_its_log(
    install_logs, monkeypatch, capsys
):
    monkeypatch.setattr(install, "HEARTBEAT_SECONDS", 0.2)
    install.run_step(
        "demo",
        "demo: two commands",
        [sys.executable, "-c", "print('first command')"],
        [sys.executable, "-c", "import time; [print(i) for i in range(500)]; time.sleep(1)"],
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    # The heartbeat grows the line while the second command sleeps.
    heartbeats = r"( \d+ s \.\.\.)+"
    assert re.fullmatch(rf"\[install\] demo: two commands \.\.\.{heartbeats} done in \d+ s\n", out)
    log = (install_logs / "demo.log").read_text()
    assert "first command" in log and "\n499\n" in log


def test_failed_install_step_names_its_log_and_shows_its_last_lines(install_logs, capsys):
    failing = "import sys; [print(f'line {i}') for i in range(100)]; sys.exit(3)"
    with pytest.raises(StackError) as failed:
        install.run_step("demo", "demo: failing", [sys.executable, "-c", failing])
    assert capsys.readouterr().out == "[install] demo: failing ... failed (exit code 3)\n"
    message = str(failed.value)
    assert str(install_logs / "demo.log") in message
    assert "line 70\n" in message and message.endswith("line 99")
    assert "line 69\n" not in message
