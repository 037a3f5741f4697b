#!/usr/bin/env bash
# The images the Dockerfiles and docker/compose.yaml start FROM, for a build with `--pull=never`: pulled where a
# registry is reachable, otherwise stood in for from Debian packages, under the exact names the files use.
#
# This machine kind reaches no container registry (like an air-gapped build host), only Debian's mirror and PyPI.
# The stand-ins are NOT the official images (docs/deploy.md says what differs): they exist so that the committed
# Dockerfiles build and run here unchanged. Each carries the label gridwatch.stand-in=true.
#
#   python:3.13-slim-trixie   debootstrap --variant=minbase trixie + Debian's python3 (3.13)
#                             (the official image builds CPython 3.13 itself under /usr/local, with pip)
#                             and pip from the wheel Debian ships
#   prom/prometheus:v3.5.0    Debian trixie's prometheus package (an older Prometheus, 2.x), same paths and user
#
# Not stood in: grafana/grafana (Debian has no Grafana package); compose's Grafana service is not started here.
set -euo pipefail

PYTHON_IMAGE=docker.io/library/python:3.13-slim-trixie
PROMETHEUS_IMAGE=docker.io/prom/prometheus:v3.5.0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The host's certificate authorities: on this machine kind HTTPS to the package registries needs one that only the
# host's bundle holds. Given to the stand-ins (as the official images would use a network that needs none).
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

have() { podman image exists "$1"; }

pulled() {
  timeout 120 podman pull --quiet "$1" >/dev/null 2>&1
}

# A Debian trixie root filesystem with the given packages, in a fresh folder under $work.
rootfs() {
  local target=$1
  shift
  local packages
  packages=$(IFS=,; echo "$*")
  debootstrap --variant=minbase --include="$packages" trixie "$target" "$MIRROR" >"$target.log" 2>&1 \
    || { tail -20 "$target.log"; return 1; }
  mkdir -p "$target/etc/ssl/certs"
  cp "$CA_BUNDLE" "$target/etc/ssl/certs/ca-certificates.crt"
}

slim() {
  local target=$1
  chroot "$target" apt-get clean
  rm -rf "$target"/var/lib/apt/lists/* "$target"/usr/share/doc/* "$target"/usr/share/man/* \
    "$target"/usr/share/locale/* "$target"/var/cache/debconf/*-old "$target"/var/log/*.log
}

import() {
  local target=$1 name=$2
  shift 2
  tar -C "$target" -c . | podman import --quiet "$@" --change 'LABEL gridwatch.stand-in=true' - "$name" >/dev/null
  echo "stood in for $name ($(podman image inspect --format '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
}

work=$(mktemp -d /var/tmp/gridwatch-base.XXXXXX)
trap 'umount -l "$work"/*/proc 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT

if have "$PYTHON_IMAGE" || pulled "$PYTHON_IMAGE"; then
  echo "using $PYTHON_IMAGE as it is"
else
  target="$work/python"
  # libpython3-dev: the official image ships the C headers too (numba's pycc compiles against them)
  rootfs "$target" python3 python3-venv libpython3-dev ca-certificates
  # As the official image: python, python3 and pip under /usr/local/bin, and pip allowed to install (no PEP 668
  # marker: the image's Python is the application's, not the distribution's).
  rm -f "$target"/usr/lib/python3*/EXTERNALLY-MANAGED
  # Debian disables ensurepip for its own python3: pip is installed from the wheel Debian ships for venvs.
  # shellcheck disable=SC2016 # expanded inside the chroot
  chroot "$target" sh -c 'wheel=$(ls /usr/share/python-wheels/pip-*.whl) &&
    python3 "$wheel/pip" install --quiet --no-index --no-cache-dir --root-user-action=ignore "$wheel"'
  ln -sf /usr/bin/python3 "$target/usr/local/bin/python3"
  ln -sf /usr/bin/python3 "$target/usr/local/bin/python"
  slim "$target"
  import "$target" "$PYTHON_IMAGE" \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]'
fi

if have "$PROMETHEUS_IMAGE" || pulled "$PROMETHEUS_IMAGE"; then
  echo "using $PROMETHEUS_IMAGE as it is"
else
  target="$work/prometheus"
  rootfs "$target" prometheus
  # The official image's layout: the binary on PATH, its data in /prometheus owned by nobody, which it runs as.
  mkdir -p "$target/prometheus" "$target/etc/prometheus"
  chroot "$target" chown nobody:nogroup /prometheus
  slim "$target"
  import "$target" "$PROMETHEUS_IMAGE" \
    --change 'USER nobody' \
    --change 'WORKDIR /prometheus' \
    --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
fi
