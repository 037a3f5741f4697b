#!/usr/bin/env bash
# Build both GridWatch images from the committed Dockerfiles with podman, as a user would with docker, plus
# `--pull=never` (base images come from .ci/base-images.sh: pulled, or stood in for) and `--format docker` (the
# OCI format drops HEALTHCHECK).
#
# Package downloads inside the build must trust the certificate authorities the host trusts (on this machine kind
# HTTPS to PyPI needs one only the host's bundle holds): for the build only, a uv configuration with
# `system-certs = true` is mounted where uv reads its system-wide settings. Nothing of it is in the Dockerfiles or
# in the images. The engine's layer cache makes a rebuild after a code change reuse the dependency layers.
#
#   .ci/build-images.sh [TAG]     (default tag: local; images gridwatch-backend:TAG and gridwatch-ui:TAG)
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-local}
settings=$(mktemp -d)
trap 'rm -rf "$settings"' EXIT
printf 'system-certs = true\n' >"$settings/uv.toml"
build=(podman build --pull=never --format docker --volume "$settings/uv.toml:/etc/xdg/uv/uv.toml:ro")

for image in backend ui; do
  started=$SECONDS
  "${build[@]}" --file "docker/Dockerfile.$image" --tag "gridwatch-$image:$tag" . >"${BUILD_LOG_DIR:-/tmp}/build-$image.log" 2>&1 \
    || { tail -40 "${BUILD_LOG_DIR:-/tmp}/build-$image.log"; exit 1; }
  size=$(podman image inspect --format '{{.Size}}' "gridwatch-$image:$tag" | awk '{printf "%.0f MB", $1/1e6}')
  echo "built gridwatch-$image:$tag in $((SECONDS - started)) s ($size)"
done
