#!/bin/bash
# Compression benchmark: `erofs-share mkfs -z lz4hc` against Debian's `mkfs.erofs -zlz4hc`
# (alternating runs, page cache warm), then time and size for every codec, then the read
# benchmark: every file of our lz4hc image through the library (examples/read_all) against
# the kernel reading the same image from a loop mount, caches dropped before each. Needs root.
#
#   scripts/bench-compress.sh DIR [RUNS]
#
# DIR is an extracted image tree (see scripts/bench-mkfs.sh). Build first:
#   cargo build --release -p erofs-share && cargo build --release --example read_all
set -eu
dir=${1:?usage: bench-compress.sh DIR [RUNS]}
runs=${2:-5}
root=$(dirname "$0")/..
ours=$root/target/release/erofs-share
read_all=$root/target/release/examples/read_all
out=$(mktemp -d "${TMPDIR:-/var/tmp}/bench-compress.XXXXXX")
mnt=$out/mnt
mkdir "$mnt"
trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$out"' EXIT
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }

find "$dir" -type f -exec cat {} + >/dev/null
for i in $(seq "$runs"); do
    a=$(secs "$ours" mkfs -q -z lz4hc "$out/ours.erofs" "$dir")
    b=$(secs mkfs.erofs -zlz4hc "$out/debian.erofs" "$dir")
    echo "run $i: ours lz4hc ${a}s, debian lz4hc ${b}s"
done
echo "lz4hc sizes: ours $(stat -c %s "$out/ours.erofs"), debian $(stat -c %s "$out/debian.erofs")"
for z in lz4 lz4hc zstd deflate lzma; do
    t=$(secs "$ours" mkfs -q -z $z "$out/$z.erofs" "$dir")
    echo "ours $z: ${t}s, $(stat -c %s "$out/$z.erofs") bytes"
done
for i in $(seq "$runs"); do
    sync; echo 3 >/proc/sys/vm/drop_caches
    lib=$("$read_all" "$out/lz4hc.erofs")
    dev=$(losetup -f --show -r --direct-io=on "$out/lz4hc.erofs")
    mount -t erofs -o ro "$dev" "$mnt"
    sync; echo 3 >/proc/sys/vm/drop_caches
    k=$(secs sh -c "cd '$mnt' && find . -type f -print0 | xargs -0 cat")
    umount "$mnt"; losetup -d "$dev"
    echo "read run $i: library ${lib##*, }, kernel ${k}s"
done
