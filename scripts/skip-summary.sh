#!/usr/bin/env bash
# Print the tests that skipped (the lines the privilege gate, crates/testkit/src/gate.rs,
# appended to FILE: "binary::test: reason"), sorted, and their count.
set -euo pipefail
log=${1:?usage: skip-summary.sh FILE}
n=0
[ -s "$log" ] && n=$(wc -l <"$log")
if [ "$n" = 0 ]; then
    echo "skipped: none (every test ran)"
else
    echo "skipped: $n test(s) could not run on this machine:"
    LC_ALL=C sort "$log" | sed 's/^/  /'
fi
