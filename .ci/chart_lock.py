"""Write, or check, helm/gridwatch/Chart.lock with the real helm, without reaching a chart repository.

`helm dependency update` writes Chart.lock: the pinned dependencies as resolved, and a digest of Chart.yaml's
`dependencies:` together with them. After a pin bump, `helm dependency build` refuses a lock whose digest no longer
matches ("the lock file (Chart.lock) is out of sync"), so the lock is committed and regenerated with the pins.

The chart repositories are not reachable from CI (only PyPI and Debian are), and the lock records only names,
versions, repository URLs and that digest, never the archives' content. So helm runs here against an offline
stand-in: throw-away helm home folders whose repositories.yaml names the upstream URLs, cached index files that
list exactly the pinned versions, and a local HTTP server on 127.0.0.1 serving stub packages (a Chart.yaml of the
right name and version, packaged by `helm package`). helm resolves, downloads and locks as it would online.

    python .ci/chart_lock.py            # (make chart-lock) write helm/gridwatch/Chart.lock after a pin bump
    python .ci/chart_lock.py --check    # the lock agrees with the pins and `helm dependency build` accepts it

Everything happens on a temporary copy of Chart.yaml (and Chart.lock): the chart's own charts/ folder never receives a
stub package. The helm binary is $HELM, else `helm` on PATH, else .tools/bin/helm (`make tools`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gridwatch"
STUB_CREATED = "2000-01-01T00:00:00Z"


def helm_binary() -> str:
    found = os.environ.get("HELM") or shutil.which("helm") or shutil.which("helm", path=str(ROOT / ".tools" / "bin"))
    if not found:
        raise SystemExit("helm is not installed: `make tools` puts one into .tools/bin (or set HELM=/path/to/helm)")
    return found


def dependencies(chart: Path) -> list[dict[str, Any]]:
    return yaml.safe_load((chart / "Chart.yaml").read_text()).get("dependencies") or []


def repository_name(url: str) -> str:
    """A repository name for a URL, as `helm repo add` would be given (only used inside the throw-away home)."""
    return "".join(c if c.isalnum() else "-" for c in url.removeprefix("https://").strip("/"))


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def offline_repositories(pins: list[dict[str, Any]], helm: str) -> Iterator[dict[str, str]]:
    """The environment for helm, pointed at stand-ins of the pinned dependencies' repositories."""
    with tempfile.TemporaryDirectory(prefix="chart-lock-") as scratch:
        work = Path(scratch)
        home = {
            "HELM_CONFIG_HOME": work / "config",
            "HELM_CACHE_HOME": work / "cache",
            "HELM_DATA_HOME": work / "data",
            "HELM_CONTENT_CACHE": work / "cache" / "content",
            "HELM_REPOSITORY_CACHE": work / "cache" / "repository",
            "HELM_REPOSITORY_CONFIG": work / "config" / "repositories.yaml",
            "HELM_REGISTRY_CONFIG": work / "config" / "registry.json",
        }
        for folder in ("HELM_CONFIG_HOME", "HELM_CONTENT_CACHE", "HELM_REPOSITORY_CACHE", "HELM_DATA_HOME"):
            home[folder].mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **{key: str(path) for key, path in home.items()}}
        packages = work / "packages"
        packages.mkdir()
        for pin in pins:
            source = work / "stubs" / pin["name"]
            source.mkdir(parents=True)
            stub = {"apiVersion": "v2", "name": pin["name"], "version": pin["version"], "description": "offline stub"}
            (source / "Chart.yaml").write_text(yaml.safe_dump(stub))
            packaged = run(helm, "package", str(source), "--destination", str(packages), env=env)
            if packaged.returncode != 0:
                raise SystemExit(f"helm package failed:\n{packaged.stdout}{packaged.stderr}")

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(packages)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            indexes: dict[str, dict[str, Any]] = {}
            for pin in pins:
                archive = packages / f"{pin['name']}-{pin['version']}.tgz"
                entries = indexes.setdefault(pin["repository"], {})
                entries.setdefault(pin["name"], []).append(
                    {
                        "apiVersion": "v2",
                        "name": pin["name"],
                        "version": pin["version"],
                        "created": STUB_CREATED,
                        "digest": hashlib.sha256(archive.read_bytes()).hexdigest(),
                        "urls": [f"{base}/{archive.name}"],
                    }
                )
            repositories = []
            for url, entries in indexes.items():
                name = repository_name(url)
                repositories.append({"name": name, "url": url})
                index = {"apiVersion": "v1", "entries": entries, "generated": STUB_CREATED}
                (home["HELM_REPOSITORY_CACHE"] / f"{name}-index.yaml").write_text(yaml.safe_dump(index))
            config = {"apiVersion": "", "generated": STUB_CREATED, "repositories": repositories}
            home["HELM_REPOSITORY_CONFIG"].write_text(yaml.safe_dump(config))
            yield env
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def scratch_chart(chart: Path, destination: Path, *, with_lock: bool) -> Path:
    """Chart.yaml (and Chart.lock) alone: all `helm dependency` reads, without the chart's own charts/ folder."""
    copy = destination / chart.name
    copy.mkdir()
    shutil.copy2(chart / "Chart.yaml", copy / "Chart.yaml")
    if with_lock and (chart / "Chart.lock").exists():
        shutil.copy2(chart / "Chart.lock", copy / "Chart.lock")
    return copy


def lock_body(text: str) -> dict[str, Any]:
    """A lock without its `generated` time stamp, which changes at every run and means nothing."""
    lock = yaml.safe_load(text) or {}
    lock.pop("generated", None)
    return lock


def write_lock(chart: Path, helm: str) -> int:
    with offline_repositories(dependencies(chart), helm) as env, tempfile.TemporaryDirectory() as scratch:
        copy = scratch_chart(chart, Path(scratch), with_lock=False)
        result = run(helm, "dependency", "update", "--skip-refresh", str(copy), env=env)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 1
        written = (copy / "Chart.lock").read_text()
    target = chart / "Chart.lock"
    if target.exists() and lock_body(target.read_text()) == lock_body(written):
        print(f"{target} is up to date (kept, with its time stamp)")
        return 0
    target.write_text(written)
    print(f"wrote {target}:\n{written}")
    return 0


def check_lock(chart: Path, helm: str) -> int:
    """0 when the lock names exactly the pins and `helm dependency build` accepts it; else 1, saying why."""
    lock_file = chart / "Chart.lock"
    if not lock_file.exists():
        print(f"{lock_file} is missing: run `make chart-lock`", file=sys.stderr)
        return 1
    pins = dependencies(chart)
    locked = yaml.safe_load(lock_file.read_text()).get("dependencies") or []
    wanted = [{key: pin[key] for key in ("name", "repository", "version")} for pin in pins]
    if locked != wanted:
        print(f"Chart.lock lists {locked}, Chart.yaml pins {wanted}: run `make chart-lock`", file=sys.stderr)
        return 1
    with offline_repositories(pins, helm) as env, tempfile.TemporaryDirectory() as scratch:
        copy = scratch_chart(chart, Path(scratch), with_lock=True)
        result = run(helm, "dependency", "build", "--skip-refresh", str(copy), env=env)
        output = result.stdout + result.stderr
        fetched = sorted(path.name for path in (copy / "charts").glob("*.tgz"))
    expected = sorted(f"{pin['name']}-{pin['version']}.tgz" for pin in pins)
    if result.returncode != 0 or "out of sync" in output or fetched != expected:
        print(f"helm dependency build refused the lock (fetched {fetched}):\n{output}", file=sys.stderr)
        return 1
    print(f"Chart.lock agrees with Chart.yaml and helm dependency build accepts it: {', '.join(fetched)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="check the lock instead of writing it")
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart folder (default helm/gridwatch)")
    args = parser.parse_args(argv)
    helm = helm_binary()
    return check_lock(args.chart, helm) if args.check else write_lock(args.chart, helm)


if __name__ == "__main__":
    sys.exit(main())
