#!/usr/bin/env bash
# Run every test, then list the tests that skipped and why. As root it first installs the
# Debian packages the tests use (erofs-utils as a second opinion, attr/acl for xattr tools,
# fuse3, zstd/gzip for compressed tar input, mmdebstrap for bench runtime's container roots,
# umoci as the reference OCI unpacker), so that the tests which mount images (kernel erofs
# through loop devices, FUSE) run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    for p in erofs-utils attr acl fuse3 util-linux zstd gzip mmdebstrap umoci; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi
# Tests that cannot run here (not root, no /dev/fuse, …) pass as far as the harness knows;
# the gate records each in this file, listed after the run.
skips=$(mktemp)
trap 'rm -f "$skips"' EXIT
export EROFS_SHARE_SKIP_LOG=$skips
status=0
cargo test --workspace --release --no-fail-fast "$@" || status=$?
scripts/skip-summary.sh "$skips"
exit $status
