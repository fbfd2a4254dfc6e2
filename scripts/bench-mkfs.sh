#!/bin/sh
# Time `erofs-share mkfs` (fingerprints on, the default) against Debian's `mkfs.erofs` on the
# same directory, alternating runs, with the page cache warm; print each run, the medians and
# the image sizes.
#
#   scripts/bench-mkfs.sh DIR [RUNS] [erofs-share binary, default target/release/erofs-share]
#
# DIR is an extracted image tree, e.g. (as root, keeping owners and xattrs):
#   mkdir /var/tmp/redis-a && tar --xattrs --xattrs-include='*' --acls --numeric-owner \
#       -xpf /var/tmp/erofs-share-corpus/redis/a.tar -C /var/tmp/redis-a
set -eu
dir=${1:?usage: bench-mkfs.sh DIR [RUNS] [BINARY]}
runs=${2:-5}
ours=${3:-$(dirname "$0")/../target/release/erofs-share}
out=$(mktemp -d "${TMPDIR:-/var/tmp}/bench-mkfs.XXXXXX")
trap 'rm -rf "$out"' EXIT

# Warm the page cache: read every regular file once.
find "$dir" -type f -exec cat {} + >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

i=1
while [ "$i" -le "$runs" ]; do
    rm -f "$out/ours.erofs" "$out/theirs.erofs"
    # Flush the previous run's dirty pages first, so no run pays for another's writeback.
    sync; t0=$(now); "$ours" mkfs --quiet "$out/ours.erofs" "$dir"; t1=$(now)
    sync; t2=$(now); mkfs.erofs --quiet "$out/theirs.erofs" "$dir" >/dev/null; t3=$(now)
    o=$(echo "$t1 - $t0" | bc); t=$(echo "$t3 - $t2" | bc)
    echo "run $i: erofs-share mkfs ${o}s, mkfs.erofs ${t}s"
    echo "$o" >>"$out/ours.times"; echo "$t" >>"$out/theirs.times"
    i=$((i + 1))
done
so=$(stat -c %s "$out/ours.erofs"); st=$(stat -c %s "$out/theirs.erofs")
echo "median: erofs-share mkfs $(median <"$out/ours.times")s, mkfs.erofs $(median <"$out/theirs.times")s"
echo "size: erofs-share mkfs $so bytes, mkfs.erofs $st bytes ($(echo "scale=3; ($so - $st) * 100 / $st" | bc) %)"
echo "versions: $("$ours" --version), mkfs.erofs $(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo '?')"
