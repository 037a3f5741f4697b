#!/usr/bin/env bash
# Install checkov (the IaC security scanner the chart and Dockerfile tests run) into the folder given as $1
# (default /usr/local/bin), in its own virtualenv managed by `uv tool`.
#
# Why not the project's dev group: checkov pins its ~70 dependencies tightly (boto3, an old packaging...), and
# locking it with the project downgrades packaging, pytest and python-dateutil for every developer. Isolated, it
# neither constrains nor is constrained by uv.lock. The version is pinned here instead.
set -euo pipefail
dest="${1:-/usr/local/bin}"
version="${CHECKOV_VERSION:-3.3.30}"
mkdir -p "$dest"
tools="$(cd "$dest" && pwd)/../uv-tools"
UV_TOOL_DIR="$tools" UV_TOOL_BIN_DIR="$dest" python3 -m uv tool install --quiet --force --python python3 "checkov==${version}"
"$dest/checkov" --version
