"""The project's promises about itself: CI runs the README's test command, config is documented, hooks valid."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib

from app.serving.settings import Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "the Quickstart has a bash block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_two_commands_demo_then_tests():
    demo, tests = quickstart_commands()
    assert demo == "make up"
    assert tests == "make test"


def test_ci_runs_exactly_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == quickstart_commands()[1]


def test_make_targets_exist_and_bootstrap_uv():
    dry_run = subprocess.run(
        ["make", "-n", "up", "test", "fmt", "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert dry_run.returncode == 0, dry_run.stderr
    assert "python3 -m pip install --quiet uv" in dry_run.stdout
    assert "pytest" in dry_run.stdout
    assert "gridwatch up" in dry_run.stdout


def test_every_setting_is_in_the_readme_table_and_nothing_else():
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z_]+)`", cell)}
    backend = {name.upper() for name in Settings.model_fields}
    ui_only = {"BACKEND_URL", "STREAMLIT_SERVER_PORT"}
    assert documented - ui_only == backend


def test_ui_extra_has_no_scikit_learn():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ui = " ".join(project["optional-dependencies"]["ui"] + project["dependencies"])
    assert "scikit-learn" not in ui
    assert "scikit-learn" in " ".join(project["optional-dependencies"]["backend"])


def test_gitignore_keeps_models_and_caches_out():
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "--no-index",
            "models/iso_forest.joblib",
            ".pytest_cache/x",
            "helm/gridwatch/charts/x.tgz",
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert len(ignored.stdout.splitlines()) == 3, ignored.stdout


def test_pre_commit_config_is_valid():
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_gridwatch_command_in_the_readme_parses():
    """Each `gridwatch ...` the README shows (in code, with its options) is accepted by the real argument parser."""
    from app.tools.cli import build_parser

    shown = re.findall(r"gridwatch ((?:serve|train|evaluate|simulate|load|bench|up)\b[^`|\\\n]*)", README)
    commands = {" ".join(part for part in line.split() if not part.startswith(("$(", "|"))) for line in shown}
    assert len(commands) >= 8, commands
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in sorted(commands):
        argv = shlex.split(command)
        argv = argv[: argv.index("|")] if "|" in argv else argv
        if any(part.startswith("[") for part in argv):  # the command table's [--option ...] synopsis
            known = subcommands[argv[0]]._option_string_actions
            assert set(re.findall(r"--[a-z-]+|-n\b", command)) <= set(known), command
            continue
        parser.parse_args(argv)  # exits (fails the test) on an unknown option or a bad value
