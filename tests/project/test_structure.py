"""The shape of app/: packages by job, no import circle, the detector free of everything web, metrics and tracing,
the scoring core free of every web framework (so a second front door reuses it without HTTP), and a UI that
imports only the simulator and the shared layer."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from tests.support import ROOT

APP = ROOT / "app"
WEB_METRICS_TRACING = ("fastapi", "starlette", "uvicorn", "prometheus_client", "opentelemetry", "pydantic_settings")
"""What the detector must never import: the service's frameworks. Its users (serving, tools) bring them."""
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "httptools", "h11")
"""What the scoring core must never import: a broker consumer serves the same model without any of them."""


def imported_modules(path) -> set[str]:
    """Every module a Python file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden_imports(imports: set[str], libraries: tuple[str, ...]) -> list[str]:
    """The imports that name one of ``libraries`` or a front door's or the tools' code (app.serving, app.tools)."""
    return [
        name for name in imports if name.split(".")[0] in libraries or name.startswith(("app.serving", "app.tools"))
    ]


def libraries_loaded_by(package: str, libraries: tuple[str, ...]) -> str:
    """Beyond the source: which of ``libraries`` a fresh process has loaded after importing every module of
    ``app.<package>`` (printed as a sorted list)."""
    modules = ", ".join(f"app.{package}.{path.stem}" for path in sorted((APP / package).glob("*.py")))
    code = (
        f"import sys, importlib\nfor name in '{modules}'.split(', '): importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(libraries)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return result.stdout.strip()


def test_app_is_packages_by_job_plus_the_simulator():
    packages = {entry.name for entry in APP.iterdir() if entry.is_dir() and (entry / "__init__.py").exists()}
    modules = {entry.name for entry in APP.glob("*.py")}
    assert packages == {"common", "detector", "scoring", "serving", "stream", "tools"}
    assert modules == {"__init__.py", "__main__.py", "sim.py"}


@pytest.mark.parametrize("module", sorted(path.stem for path in (APP / "detector").glob("*.py")))
def test_no_detector_module_imports_serving_tools_or_web_libraries(module: str):
    forbidden = forbidden_imports(imported_modules(APP / "detector" / f"{module}.py"), WEB_METRICS_TRACING)
    assert not forbidden, f"app/detector/{module}.py imports {forbidden}"


def test_importing_the_whole_detector_loads_no_web_metrics_or_tracing_library():
    """Beyond the source: what a process really has loaded after importing every detector module."""
    assert libraries_loaded_by("detector", WEB_METRICS_TRACING) == "[]"


def test_the_ui_needs_no_path_tricks():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "ui").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "sys.path" in line
    ]
    assert offenders == []


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path) -> set[str]:
    """The modules ``path`` imports when it runs: at any depth, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a ``from package import module`` counts as the module)."""
    paths = sorted([*APP.rglob("*.py"), *(ROOT / "ui").rglob("*.py")])
    modules = {_module_name(path): path for path in paths}

    def resolved(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {
        module: {target for name in _runtime_imports(path) if (target := resolved(name)) not in (None, module)}
        for module, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each one import circle or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_in_app_or_ui():
    """Function-level imports count: a circle dodged by importing inside a function is still a circle."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(path.stem for path in (APP / "scoring").glob("*.py")))
def test_the_scoring_core_imports_no_web_framework_and_no_front_door(module: str):
    forbidden = forbidden_imports(_runtime_imports(APP / "scoring" / f"{module}.py"), WEB_FRAMEWORKS)
    assert not forbidden, f"app/scoring/{module}.py imports {forbidden}"


def test_importing_the_whole_scoring_core_loads_no_web_framework():
    assert libraries_loaded_by("scoring", WEB_FRAMEWORKS) == "[]"


def test_the_shared_layer_imports_only_the_standard_library_numpy_and_itself():
    allowed_third_party = {"numpy"}
    graph = import_graph()
    for path in sorted((APP / "common").glob("*.py")):
        project = graph[_module_name(path)]
        assert {name for name in project if name != "app" and not name.startswith("app.common")} == set(), path.name
        third_party = {
            name.split(".")[0]
            for name in _runtime_imports(path)
            if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "app"
        }
        assert third_party <= allowed_third_party, f"app/common/{path.name} imports {third_party}"


def test_the_ui_imports_only_the_simulator_and_the_shared_layer_of_app():
    graph = import_graph()
    imported = {target for module, targets in graph.items() if module.startswith("ui") for target in targets}
    from_app = {target for target in imported if target.split(".")[0] == "app"}
    assert {
        target for target in from_app if target not in {"app", "app.sim"} and not target.startswith("app.common")
    } == set()


def test_the_module_table_in_the_development_guide_lists_every_module():
    """docs/development.md's module table once missed modules; now every file under app/ and ui/ must have its
    row, and every row must name a file that exists."""
    table = (ROOT / "docs" / "development.md").read_text()
    listed = set(re.findall(r"^\| `((?:app|ui)/[\w/]+\.py)` \|", table, flags=re.MULTILINE))
    modules = {
        str(path.relative_to(ROOT))
        for path in [*APP.rglob("*.py"), *(ROOT / "ui").rglob("*.py")]
        if path.name != "__init__.py" or path.parent in (APP, ROOT / "ui")
    }
    assert sorted(modules - listed) == [], "modules without a row"
    assert sorted(listed - modules) == [], "rows naming no module"


@pytest.mark.parametrize("module", sorted(path.stem for path in (APP / "stream").glob("*.py")))
def test_the_stream_front_door_imports_no_http_service_and_no_web_framework(module: str):
    """The second front door reuses the scoring core, never the HTTP service's code."""
    forbidden = forbidden_imports(_runtime_imports(APP / "stream" / f"{module}.py"), WEB_FRAMEWORKS)
    assert not forbidden, f"app/stream/{module}.py imports {forbidden}"
