#!/usr/bin/env bash
# Run every test. As root it first installs the Debian packages the tests use (erofs-utils as
# a second opinion, attr/acl for xattr tools, fuse3, zstd/gzip for compressed tar input, umoci
# as the reference OCI unpacker), so that the tests which mount images (kernel erofs through
# loop devices, FUSE) run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    for p in erofs-utils attr acl fuse3 util-linux zstd gzip umoci; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi
exec cargo test --workspace --release "$@"
