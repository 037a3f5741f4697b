"""What a rendered chart runs: the images it pulls and the CPU and memory it asks for, read from `helm template`.

    helm template gridwatch helm/gridwatch | python .ci/chart_inventory.py images [--exclude PREFIX]
    helm template gridwatch helm/gridwatch | python .ci/chart_inventory.py budget [--nodes 2]

Read from the render, never from a hand-kept list, so a subchart bump or a switched-on component is counted the day it
lands. `make kind-images` pulls and loads the images (docs/deploy.md, "A room of laptops"); the budget is the table
of docs/deploy.md, "The laptop budget".

Images come from every pod template (Pods, Deployments, StatefulSets, DaemonSets, Jobs, CronJobs; init and regular
containers), from the Prometheus Operator's Prometheus and Alertmanager objects (their `image`), and from the
operator's `--prometheus-config-reloader=` argument (the sidecar it adds to those pods). The budget counts each
long-running workload at its most replicas (an HPA's or a KEDA ScaledObject's maximum, a DaemonSet once per node)
and lists run-to-completion pods (Jobs, CronJobs, `helm test` pods) apart: they come and go.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
"""Where each workload kind keeps its pod spec."""

OPERATOR_MANAGED = ("Prometheus", "Alertmanager")
"""Prometheus Operator objects whose pods the operator creates: image and resources are in their spec."""

RUN_TO_COMPLETION = ("Pod", "Job", "CronJob")
RELOADER_IMAGE = re.compile(r"^--prometheus-config-reloader=(\S+)$")
RELOADER_RESOURCE = re.compile(r"^--config-reloader-(cpu|memory)-(request|limit)=(\S+)$")
QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number: cores for CPU ("250m" is 0.25), bytes for memory ("64Mi")."""
    match = QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass(frozen=True)
class Container:
    """One container of a rendered workload, with what it asks for (0 where unset)."""

    workload: str
    name: str
    image: str
    resources: dict[str, Any]

    def amount(self, kind: str, resource: str) -> float:
        value = (self.resources.get(kind) or {}).get(resource)
        return quantity(value) if value is not None else 0.0

    @property
    def complete(self) -> bool:
        """Requests and limits for both CPU and memory."""
        return all((self.resources.get(k) or {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory"))


def documents(stream: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(stream) if isinstance(doc, dict) and doc.get("kind")]


def _dig(obj: dict[str, Any], path: Iterable[str]) -> dict[str, Any]:
    for key in path:
        obj = obj.get(key) or {}
    return obj


def _reloader(objects: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    """The config reloader's image and resources, from the operator's arguments (if an operator is rendered)."""
    image, resources = None, {}
    for obj in objects:
        spec = _dig(obj, POD_TEMPLATE_PATHS.get(obj["kind"], ("-",)))
        for container in spec.get("containers") or []:
            for arg in container.get("args") or []:
                if match := RELOADER_IMAGE.match(arg):
                    image = match.group(1)
                elif (match := RELOADER_RESOURCE.match(arg)) and match.group(3) != "0":
                    kind = "requests" if match.group(2) == "request" else "limits"
                    resources.setdefault(kind, {})[match.group(1)] = match.group(3)
    return image, resources


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Container]]:
    """Every container the render runs, with the object that runs it."""
    reloader_image, reloader_resources = _reloader(objects)
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        workload = f"{kind}/{name}"
        if kind in OPERATOR_MANAGED:
            spec = obj.get("spec") or {}
            yield obj, Container(workload, kind.lower(), spec.get("image", ""), spec.get("resources") or {})
            if reloader_image:
                yield obj, Container(workload, "config-reloader", reloader_image, reloader_resources)
            continue
        if kind not in POD_TEMPLATE_PATHS:
            continue
        spec = _dig(obj, POD_TEMPLATE_PATHS[kind])
        for key in ("initContainers", "containers"):
            for container in spec.get(key) or []:
                yield obj, Container(workload, container["name"], container["image"], container.get("resources") or {})


def images(objects: list[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """The images the render pulls, sorted, without those starting with an excluded prefix."""
    found = {container.image for _, container in containers(objects) if container.image}
    return sorted(image for image in found if not any(image.startswith(prefix) for prefix in exclude))


def max_replicas(objects: list[dict[str, Any]], obj: dict[str, Any], nodes: int) -> int:
    """The most pods a long-running workload can have: its autoscaler's maximum, or its replicas (DaemonSet: nodes)."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "DaemonSet":
        return nodes
    for scaler in objects:
        spec = scaler.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        if target.get("name") != name or target.get("kind", "Deployment") != kind:
            continue
        if scaler["kind"] == "HorizontalPodAutoscaler":
            return int(spec["maxReplicas"])
        if scaler["kind"] == "ScaledObject":
            return int(spec.get("maxReplicaCount", 100))
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


@dataclass(frozen=True)
class Row:
    workload: str
    pods: int
    cpu_request: float
    cpu_limit: float
    memory_request: float
    memory_limit: float


def budget(objects: list[dict[str, Any]], nodes: int) -> tuple[list[Row], list[Row]]:
    """Per workload, what its pods ask for at their most replicas: (long-running, run-to-completion). Init
    containers are left out: they finish before the regular ones start."""
    totals: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    pods: dict[str, int] = {}
    for obj, container in containers(objects):
        if container.name in {
            c.get("name") for c in _dig(obj, POD_TEMPLATE_PATHS.get(obj["kind"], ("-",))).get("initContainers") or []
        }:
            continue
        row = totals.setdefault(container.workload, [0.0, 0.0, 0.0, 0.0])
        for index, (kind, resource) in enumerate(
            [("requests", "cpu"), ("limits", "cpu"), ("requests", "memory"), ("limits", "memory")]
        ):
            row[index] += container.amount(kind, resource)
        kinds[container.workload] = obj["kind"]
        pods[container.workload] = 1 if obj["kind"] in RUN_TO_COMPLETION else max_replicas(objects, obj, nodes)
    running, finishing = [], []
    for workload, (cpu_request, cpu_limit, memory_request, memory_limit) in sorted(totals.items()):
        count = pods[workload]
        row = Row(workload, count, cpu_request * count, cpu_limit * count, memory_request * count, memory_limit * count)
        (finishing if kinds[workload] in RUN_TO_COMPLETION else running).append(row)
    return running, finishing


def _table(rows: list[Row], title: str) -> list[str]:
    lines = [
        f"| {title} | Pods | CPU requested | CPU limit | Memory requested | Memory limit |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.workload} | {row.pods} | {row.cpu_request:.2f} | {row.cpu_limit:.2f} | "
            f"{row.memory_request / 2**20:.0f} MiB | {row.memory_limit / 2**20:.0f} MiB |"
        )
    total = Row(
        "**total**",
        sum(r.pods for r in rows),
        sum(r.cpu_request for r in rows),
        sum(r.cpu_limit for r in rows),
        sum(r.memory_request for r in rows),
        sum(r.memory_limit for r in rows),
    )
    lines.append(
        f"| {total.workload} | {total.pods} | {total.cpu_request:.2f} | {total.cpu_limit:.2f} | "
        f"{total.memory_request / 2**20:.0f} MiB | {total.memory_limit / 2**20:.0f} MiB |"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("images", help="the images the render pulls, one per line")
    listing.add_argument("--exclude", action="append", default=[], help="leave out images starting with this prefix")
    sizing = commands.add_parser("budget", help="CPU and memory at the most replicas, as Markdown tables")
    sizing.add_argument("--nodes", type=int, default=2, help="nodes a DaemonSet runs on (kind: 2)")
    commands.add_parser("check", help="fail when a container lacks CPU or memory requests or limits")
    args = parser.parse_args(argv)
    objects = documents(sys.stdin.read())
    if args.command == "images":
        print("\n".join(images(objects, args.exclude)))
    elif args.command == "budget":
        running, finishing = budget(objects, args.nodes)
        print("\n".join([*_table(running, "Running"), "", *_table(finishing, "Run to completion, one at a time")]))
    else:
        missing = [c for _, c in containers(objects) if not c.complete]
        for container in missing:
            print(f"{container.workload} {container.name}: requests and limits incomplete: {container.resources}")
        return 1 if missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
