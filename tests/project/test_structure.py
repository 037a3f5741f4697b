"""The shape of app/: three packages by job, and the detector free of everything web, metrics and tracing."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.support import ROOT

APP = ROOT / "app"
WEB_METRICS_TRACING = ("fastapi", "starlette", "uvicorn", "prometheus_client", "opentelemetry", "pydantic_settings")
"""What the detector must never import: the service's frameworks. Its users (serving, tools) bring them."""


def imported_modules(path) -> set[str]:
    """Every module a Python file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_app_is_three_packages_by_job_plus_the_simulator():
    packages = {entry.name for entry in APP.iterdir() if entry.is_dir() and (entry / "__init__.py").exists()}
    modules = {entry.name for entry in APP.glob("*.py")}
    assert packages == {"detector", "serving", "tools"}
    assert modules == {"__init__.py", "__main__.py", "sim.py"}


@pytest.mark.parametrize("module", sorted(path.stem for path in (APP / "detector").glob("*.py")))
def test_no_detector_module_imports_serving_tools_or_web_libraries(module: str):
    imports = imported_modules(APP / "detector" / f"{module}.py")
    forbidden = [
        name
        for name in imports
        if name.split(".")[0] in WEB_METRICS_TRACING or name.startswith(("app.serving", "app.tools"))
    ]
    assert not forbidden, f"app/detector/{module}.py imports {forbidden}"


def test_importing_the_whole_detector_loads_no_web_metrics_or_tracing_library():
    """Beyond the source: what a process really has loaded after importing every detector module."""
    modules = ", ".join(f"app.detector.{path.stem}" for path in sorted((APP / "detector").glob("*.py")))
    code = (
        f"import sys, importlib\nfor name in '{modules}'.split(', '): importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(WEB_METRICS_TRACING)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_the_ui_needs_no_path_tricks():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "ui").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "sys.path" in line
    ]
    assert offenders == []
