"""Chart.lock: committed, equal to the pins of Chart.yaml, and accepted by the real `helm dependency build`.

Chart repositories are unreachable here, so .ci/chart_lock.py (`make chart-lock`) runs helm against an offline
stand-in of the upstream repositories (cached index files naming the pinned versions, stub packages served on
127.0.0.1). helm computes the lock's digest itself; these tests run that script the way a developer does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.support import CHART_DIR
from tests.support import ROOT, require_tool

SCRIPT = ROOT / ".ci" / "chart_lock.py"
PINS = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]


def chart_lock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, "HELM": require_tool("helm")},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def metadata_copy(tmp_path: Path) -> Path:
    """Chart.yaml and Chart.lock of the chart, alone in a folder: all `helm dependency` reads."""
    chart = tmp_path / "gridwatch"
    chart.mkdir()
    for name in ("Chart.yaml", "Chart.lock"):
        shutil.copy2(CHART_DIR / name, chart / name)
    return chart


def bump(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_lock_is_committed_not_ignored_and_names_exactly_the_pins():
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "helm/gridwatch/Chart.lock"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 1, "Chart.lock must not be ignored"
    lock = yaml.safe_load((CHART_DIR / "Chart.lock").read_text())
    assert lock["dependencies"] == [{k: pin[k] for k in ("name", "repository", "version")} for pin in PINS]
    assert lock["digest"].startswith("sha256:")
    assert lock["generated"], "written by helm, which stamps the time"


def test_helm_dependency_build_accepts_the_committed_lock():
    result = chart_lock("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    for pin in PINS:
        assert f"{pin['name']}-{pin['version']}.tgz" in result.stdout, "helm fetched the locked version"


def test_a_pin_bump_is_refused_until_the_lock_is_regenerated(tmp_path: Path):
    chart = metadata_copy(tmp_path)
    metrics = next(pin for pin in PINS if pin["name"] == "metrics-server")
    newer = metrics["version"].rsplit(".", 1)[0] + ".99"
    bump(chart / "Chart.yaml", f'"{metrics["version"]}"', f'"{newer}"')
    stale = chart_lock("--check", "--chart", str(chart))
    assert stale.returncode == 1
    assert "run `make chart-lock`" in stale.stderr

    # A lock edited by hand to the new version keeps the old digest: helm itself refuses it.
    bump(chart / "Chart.lock", f"version: {metrics['version']}", f"version: {newer}")
    hand_edited = chart_lock("--check", "--chart", str(chart))
    assert hand_edited.returncode == 1
    assert "out of sync" in hand_edited.stderr

    written = chart_lock("--chart", str(chart))
    assert written.returncode == 0, written.stderr
    assert f"version: {newer}" in (chart / "Chart.lock").read_text()
    accepted = chart_lock("--check", "--chart", str(chart))
    assert accepted.returncode == 0, accepted.stderr
    assert not (chart / "charts").exists(), "stub packages never land in the chart's own folder"


def test_regenerating_an_up_to_date_lock_changes_nothing(tmp_path: Path):
    chart = metadata_copy(tmp_path)
    before = (chart / "Chart.lock").read_text()
    result = chart_lock("--chart", str(chart))
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert (chart / "Chart.lock").read_text() == before


def test_the_readme_names_the_upstream_versions_the_chart_is_tested_with():
    readme = (ROOT / "README.md").read_text()
    for pin in PINS:
        assert f"{pin['name']} {pin['version']}" in readme
    # kube-prometheus-stack 88.6.x depends on the grafana chart 12.11.x, whose appVersion is Grafana 13.2: the
    # chart's major version is not Grafana's.
    assert "Grafana 13.2" in readme
    assert "Grafana 12" not in readme
