#!/usr/bin/env bash
# Generate the CO-RE header vmlinux.h from the running kernel's BTF (needs /sys/kernel/btf/vmlinux).
# Usage: gen-vmlinux.sh OUT_FILE   (written atomically; never committed)
set -euo pipefail
out=${1:?usage: gen-vmlinux.sh OUT_FILE}
btf=${VELVET_VMLINUX_BTF:-/sys/kernel/btf/vmlinux}
[ -r "$btf" ] || { echo "gen-vmlinux: $btf is missing: the kernel needs CONFIG_DEBUG_INFO_BTF" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
bpftool btf dump file "$btf" format c > "$tmp"
mv "$tmp" "$out"
trap - EXIT
