#!/usr/bin/env bash
# A real container engine for CI: Debian's rootful podman with runc, and podman-compose for docker/compose.yaml.
#
# Two settings this machine kind needs, written to /etc/containers/containers.conf (only if it does not exist, so
# a developer's own configuration is never overwritten):
# - runtime = "runc": its cgroups are hybrid (v1 controllers beside a v2 mount), where crun fails to create a
#   container's cgroup;
# - default_ulimits within the machine's hard limits: podman's defaults ask for more open files and processes than
#   the hard limits here allow, and every container start fails with "setrlimit ... operation not permitted".
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# dnsname: compose's services find each other by name (Prometheus scrapes "backend:8000") on CNI networks.
apt-get install -y -qq --no-install-recommends podman runc podman-compose debootstrap uidmap \
  golang-github-containernetworking-plugin-dnsname dnsmasq-base >/dev/null

conf=/etc/containers/containers.conf
if [[ ! -e "$conf" ]]; then
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ "$nproc" == unlimited || "$nproc" -gt 32768 ]] && nproc=32768
  [[ "$nofile" == unlimited || "$nofile" -gt 65536 ]] && nofile=65536
  mkdir -p /etc/containers
  cat >"$conf" <<CONF
# Written by GridWatch's .ci/install-podman.sh for this machine kind (see that script).
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
CONF
fi
podman --version
podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupsVersion}}'
