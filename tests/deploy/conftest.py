"""Fixtures of the deployment tests: one copy of the chart per session, and its renders by value-set name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.support import NAMED_VALUES, Rendered, chart_copy, render


class Renders(dict[str, Rendered]):
    """The chart rendered with each named value set of ``NAMED_VALUES``, each rendered once, when first asked for."""

    def __init__(self, chart: Path) -> None:
        super().__init__()
        self.chart = chart

    def __missing__(self, name: str) -> Rendered:
        self[name] = render(self.chart, NAMED_VALUES[name])
        return self[name]


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A renderable copy of helm/gridwatch (see ``chart_copy``); tests render it, none changes it."""
    return chart_copy(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="session")
def rendered(chart: Path) -> Renders:
    return Renders(chart)
