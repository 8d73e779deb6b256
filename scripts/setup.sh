#!/usr/bin/env bash
# Install what Velvet needs on Debian 12 (apt packages, the .venv); idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="clang llvm libbpf-dev libbpf1 bpftool iproute2 iptables nftables make socat procps python3-venv chromium
    etcd-server podman containerd runc containernetworking-plugins busybox-static umoci skopeo"
missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "velvet: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "velvet: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.velvet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "velvet: installing the package and its dev tools into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi
