"""Known vulnerabilities in what uv.lock installs: pip-audit over the whole lock, findings triaged in a file.

Every release in uv.lock (all extras and groups, every platform) goes to pip-audit; each finding must be accepted
in ``.ci/audit-triage.toml`` with a reason and a review date, or the test fails and names it with its fix versions.

pip-audit looks each release up in PyPI's per-release JSON (``/pypi/NAME/VERSION/json``) or in OSV. A network that
stops at the package index (this project's CI reaches only PyPI's simple index and per-project JSON) serves
neither, and pip-audit then audits nothing and says "No known vulnerabilities found". So the test never trusts a
clean report blindly: every release pip-audit could not audit is checked against what the index does serve, the
per-project JSON, whose ``vulnerabilities`` are those of the latest release and whose files say which releases
were yanked. A release that is not the latest and could not be audited is reported as a warning with the count.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import tomllib
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import IN_CI, ROOT, require_tool

TRIAGE_FILE = ROOT / ".ci" / "audit-triage.toml"
PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def canonical(name: str) -> str:
    """PEP 503 normalised name: pip-audit, uv.lock and PyPI spell some names differently (``Jinja2``, ``jinja2``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: frozenset[str]
    fix_versions: tuple[str, ...]

    def known_as(self, name: str) -> bool:
        return name == self.id or name in self.aliases


@dataclass(frozen=True)
class Accepted:
    package: str
    id: str
    reason: str
    review_by: dt.date


def locked_releases(lock: Path = ROOT / "uv.lock") -> set[tuple[str, str]]:
    """Every third-party (name, version) the lock pins; a name can appear with two versions when the resolution
    forks by Python version or platform. The project itself, installed from source, is not audited."""
    packages = tomllib.loads(lock.read_text())["package"]
    return {
        (canonical(package["name"]), package["version"])
        for package in packages
        if "registry" in package.get("source", {})
    }


def requirement_layers(releases: set[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The releases split into requirement files that each pin a name at most once (pip-audit's input format)."""
    layers: list[list[tuple[str, str]]] = []
    for name, version in sorted(releases):
        layer = next((layer for layer in layers if all(other != name for other, _ in layer)), None)
        if layer is None:
            layers.append(layer := [])
        layer.append((name, version))
    return layers


def accepted_findings(path: Path = TRIAGE_FILE) -> list[Accepted]:
    entries = tomllib.loads(path.read_text()).get("finding", [])
    return [
        Accepted(canonical(entry["package"]), entry["id"], entry["reason"], entry["review_by"]) for entry in entries
    ]


def findings_of(report: dict[str, Any]) -> list[Finding]:
    return [
        Finding(
            canonical(dependency["name"]),
            dependency["version"],
            vulnerability["id"],
            frozenset(vulnerability.get("aliases", [])),
            tuple(vulnerability.get("fix_versions", [])),
        )
        for dependency in report["dependencies"]
        for vulnerability in dependency.get("vulns", [])
    ]


def audited_releases(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (canonical(dependency["name"]), dependency["version"])
        for dependency in report["dependencies"]
        if "skip_reason" not in dependency
    }


def audited_packages(report: dict[str, Any]) -> set[str]:
    return {canonical(dependency["name"]) for dependency in report["dependencies"] if "skip_reason" not in dependency}


def untriaged(findings: list[Finding], accepted: list[Accepted]) -> list[Finding]:
    return [
        finding
        for finding in findings
        if not any(entry.package == finding.package and finding.known_as(entry.id) for entry in accepted)
    ]


def stale(findings: list[Finding], audited: set[str], accepted: list[Accepted], today: dt.date) -> list[str]:
    """Entries to look at again: past their review date, or naming a finding an audit of the package no longer has."""
    problems = []
    for entry in accepted:
        if entry.review_by < today:
            problems.append(f"{entry.package} {entry.id}: review_by {entry.review_by} has passed")
        gone = entry.package in audited and not any(
            finding.package == entry.package and finding.known_as(entry.id) for finding in findings
        )
        if gone:
            problems.append(f"{entry.package} {entry.id}: no longer found; delete the entry")
    return problems


def describe(findings: list[Finding]) -> str:
    return "; ".join(
        f"{f.package} {f.version}: {f.id} ({', '.join(sorted(f.aliases)) or 'no alias'}), "
        f"fixed in {', '.join(f.fix_versions) or 'no release yet'}"
        for f in findings
    )


# --- the real audit -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pip-audit's JSON report on every release of uv.lock."""
    pip_audit = require_tool("pip-audit")
    folder = tmp_path_factory.mktemp("audit")
    dependencies: list[dict[str, Any]] = []
    for number, layer in enumerate(requirement_layers(locked_releases())):
        requirements = folder / f"requirements-{number}.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in layer))
        output = folder / f"report-{number}.json"
        run = subprocess.run(
            [
                pip_audit,
                "--requirement",
                str(requirements),
                "--no-deps",  # the lock is the complete set: nothing to resolve
                "--disable-pip",
                "--format",
                "json",
                "--progress-spinner",
                "off",
                "--output",
                str(output),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode in {0, 1}, f"pip-audit failed to run: {run.stderr[-2000:]}"  # 1: vulnerabilities found
        for dependency in json.loads(output.read_text())["dependencies"]:
            # a skipped dependency names its version only in the reason: "... could not be audited: name (1.2)"
            skipped = re.search(r"\(([^()]+)\)$", dependency.get("skip_reason", ""))
            dependencies.append({"version": skipped.group(1) if skipped else None, **dependency})
    return {"dependencies": dependencies}


@pytest.fixture(scope="module")
def index_findings(report: dict[str, Any]) -> tuple[list[Finding], list[str], list[str]]:
    """For what pip-audit could not audit: findings on latest releases, yanked releases, releases left unchecked."""
    audited = audited_releases(report)
    unaudited = sorted(release for release in locked_releases() if release not in audited)
    names = sorted({name for name, _ in unaudited})

    def project(name: str) -> dict[str, Any] | None:
        try:
            answer = httpx2.get(PYPI_PROJECT_JSON.format(name=name), timeout=60, follow_redirects=True)
        except httpx2.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None

    with ThreadPoolExecutor(8) as pool:
        projects = dict(zip(names, pool.map(project, names), strict=True))
    if unaudited and all(document is None for document in projects.values()):
        message = "neither pip-audit nor PyPI's project JSON could be reached"
        if IN_CI:
            pytest.fail(f"{message}; CI reaches PyPI, so this is an error")
        pytest.skip(message)

    findings, yanked, unchecked = [], [], []
    for name, version in unaudited:
        document = projects[name]
        files = (document or {}).get("releases", {}).get(version, [])
        if files and all(file.get("yanked") for file in files):
            yanked.append(f"{name} {version}: yanked ({files[0].get('yanked_reason') or 'no reason given'})")
        if document is None or document["info"]["version"] != version:
            unchecked.append(f"{name} {version}")
            continue
        findings += [
            Finding(name, version, v["id"], frozenset(v.get("aliases", [])), tuple(v.get("fixed_in", [])))
            for v in document.get("vulnerabilities", [])
        ]
    return findings, yanked, unchecked


def test_pip_audit_sees_every_locked_release(report: dict[str, Any]):
    listed = {(canonical(dependency["name"]), dependency["version"]) for dependency in report["dependencies"]}
    assert listed == locked_releases()


def test_releases_of_one_name_go_to_separate_requirement_files():
    layers = requirement_layers({("cloudcoil", "0.6.0"), ("cloudcoil", "0.7.1"), ("numpy", "2.4.6")})
    assert layers == [[("cloudcoil", "0.6.0"), ("numpy", "2.4.6")], [("cloudcoil", "0.7.1")]]


def test_every_known_vulnerability_is_triaged(
    report: dict[str, Any], index_findings: tuple[list[Finding], list[str], list[str]]
):
    from_index, yanked, unchecked = index_findings
    open_findings = untriaged(findings_of(report) + from_index, accepted_findings())
    assert not open_findings, f"triage these in {TRIAGE_FILE.name} or upgrade: {describe(open_findings)}"
    assert not yanked, f"the lock pins yanked releases: {yanked}"
    if unchecked:
        audited = len(audited_packages(report))
        warnings.warn(
            f"pip-audit audited {audited} of {len(locked_releases())} locked releases (its vulnerability "
            f"services are unreachable here); {len(unchecked)} releases older than the latest could not be checked: "
            f"{', '.join(unchecked)}",
            stacklevel=1,
        )


def test_triage_entries_are_current(report: dict[str, Any]):
    problems = stale(findings_of(report), audited_packages(report), accepted_findings(), dt.datetime.now(dt.UTC).date())
    assert not problems, problems


# --- the gate itself, on a synthetic report -----------------------------------------------------------------------

SYNTHETIC = {
    "dependencies": [
        {
            "name": "Jinja2",
            "version": "3.1.2",
            "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "aliases": ["CVE-2024-22195"], "fix_versions": ["3.1.3"]}],
        },
        {"name": "numpy", "version": "2.3.0", "vulns": []},
        {"name": "altair", "skip_reason": "Dependency not found on PyPI and could not be audited: altair (6.3.0)"},
    ]
}
TODAY = dt.date(2026, 11, 23)


def accepted(package: str, finding_id: str, review_by: dt.date = dt.date(2027, 1, 1)) -> Accepted:
    return Accepted(package, finding_id, "argued", review_by)


def test_an_untriaged_finding_fails_the_gate_and_names_its_fix():
    findings = findings_of(SYNTHETIC)
    assert untriaged(findings, []) == findings
    assert "jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (CVE-2024-22195), fixed in 3.1.3" in describe(findings)


@pytest.mark.parametrize("finding_id", ["GHSA-h5c8-rqwp-cp95", "CVE-2024-22195"])
def test_a_finding_is_accepted_by_its_id_or_alias_for_its_package_only(finding_id: str):
    findings = findings_of(SYNTHETIC)
    assert untriaged(findings, [accepted("jinja2", finding_id)]) == []
    assert untriaged(findings, [accepted("markupsafe", finding_id)]) == findings


def test_triage_entries_expire_and_go_stale():
    findings, audited = findings_of(SYNTHETIC), audited_packages(SYNTHETIC)
    assert audited == {"jinja2", "numpy"}
    assert stale(findings, audited, [accepted("jinja2", "CVE-2024-22195")], TODAY) == []
    assert stale(findings, audited, [accepted("jinja2", "CVE-2024-22195", dt.date(2026, 11, 1))], TODAY) == [
        "jinja2 CVE-2024-22195: review_by 2026-11-01 has passed"
    ]
    assert stale(findings, audited, [accepted("numpy", "CVE-2025-0001")], TODAY) == [
        "numpy CVE-2025-0001: no longer found; delete the entry"
    ]
    # An entry for a package the audit could not reach is kept: nothing says its finding is gone.
    assert stale(findings, audited, [accepted("altair", "CVE-2025-0002")], TODAY) == []


def test_the_triage_file_parses_and_every_entry_is_complete():
    for entry in accepted_findings():
        assert entry.reason.strip(), entry
        assert isinstance(entry.review_by, dt.date), entry
