"""The project's promises about itself: CI runs the README's test command, config is documented, the docs' commands
and links work, hooks valid."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import unquote

from app.serving.settings import Settings
from app.stream.settings import StreamSettings
from app.tools.cli import build_parser
from tests.support import ROOT

README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
README_LIMIT_BYTES = 20_000
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose_and_code(text: str) -> tuple[str, str]:
    """A Markdown page split into its prose (fenced blocks and inline code removed) and its code (both kinds)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            code.append(line)
            continue
        code.extend(re.findall(r"`([^`]+)`", line))
        prose.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(prose), "\n".join(code)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text in lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts with its text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, with GitHub's -1, -2... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links() -> list[tuple[Path, str]]:
    """(page, target) of every link and image in the prose of the README and the docs pages that has no scheme."""
    return [
        (page, target)
        for page in PAGES
        for target in LINK.findall(prose_and_code(page.read_text())[0])
        if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target)
    ]


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
    backend = {name.upper() for name in Settings.model_fields} | {name.upper() for name in StreamSettings.model_fields}
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


def test_every_gridwatch_command_in_readme_and_docs_parses():
    """Each `gridwatch ...` the README or a docs page shows (in code, with its options) is accepted by the real
    argument parser."""
    shown = [
        command
        for page in PAGES
        for command in re.findall(
            r"gridwatch ((?:serve|stream|train|evaluate|simulate|load|publish|bench|up)\b[^`|\\\n]*)", page.read_text()
        )
    ]
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


def test_readme_is_a_first_read_under_20_kb():
    size = len(README.encode())
    assert size < README_LIMIT_BYTES, f"README.md is {size} bytes: move the depth into docs/"


def test_readme_links_every_docs_page():
    linked = {
        (ROOT / unquote(target.partition("#")[0])).resolve() for page, target in relative_links() if page == PAGES[0]
    }
    assert not [page.name for page in DOCS if page.resolve() not in linked]


def test_every_relative_link_in_readme_and_docs_resolves():
    """Each relative link or image points to a file of this repository, and its #anchor to a heading (GitHub's
    slugs) when the target is a Markdown page."""
    links = relative_links()
    assert len(links) >= 20, links
    broken = []
    for page, target in links:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path)).resolve() if path else page
        where = f"{page.relative_to(ROOT)}: {target}"
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{where} (no such file in the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no such heading; {sorted(anchors(resolved))})")
    assert not broken, "\n".join(broken)


def test_github_slugs():
    assert github_slug("Running it in a local cluster (kind + ctlptl + Helm)") == (
        "running-it-in-a-local-cluster-kind--ctlptl--helm"
    )
    assert github_slug("Several workers (`WORKERS>1`)") == "several-workers-workers1"
    assert github_slug("GridWatchBackendAbsent") == "gridwatchbackendabsent"
    assert github_slug("The [runbook](runbook.md) and model_info") == "the-runbook-and-model_info"


def test_every_make_target_in_readme_and_docs_exists():
    """`make X` shown in code anywhere in the README or the docs names a real target (`make -n` knows it)."""
    shown = {
        target for page in PAGES for target in re.findall(r"\bmake ([a-z][a-z-]*)", prose_and_code(page.read_text())[1])
    }
    assert {"up", "test", "kind", "kind-test", "prometheus", "compose-up"} <= shown, shown
    dry_run = subprocess.run(["make", "-n", *sorted(shown)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert dry_run.returncode == 0, dry_run.stderr
