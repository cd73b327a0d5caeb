#!/bin/bash
# Every benchmark behind the "Quiet machine" table of docs/benchmarks.md, one after the other, each to its own log:
#   bash bench/all.sh [LOG-DIRECTORY]     (default: bench-logs/; about 17 minutes on the 2-core machine)
# Run it on an otherwise idle machine, from the repository root, after the README's install command.
set -u
logs=${1:-bench-logs}
mkdir -p "$logs"
run() {
    local name=$1
    shift
    echo "== $(date +%T) $name: $*" | tee -a "$logs/index.log"
    timeout 1500 .venv/bin/python "$@" >"$logs/$name.log" 2>&1
    echo "   exit $? at $(date +%T)" | tee -a "$logs/index.log"
}
run do53 bench/do53.py --seconds 4 --rounds 2 --query-log both
run detect bench/do53.py --seconds 4 --rounds 4 --query-log off --detect both --grid 1x256,4x256,16x1024
run encrypted bench/encrypted.py --seconds 3 --rounds 1 --query-log both
run recursion bench/recursion.py
run recursion5 bench/recursion.py --rounds 0 --cold-passes 5
run feed_refresh bench/feed_refresh.py --names 2000000
run policy_load bench/policy_load.py --names 2000000 --feeds 5 --no-peer
run policy_load_apart bench/policy_load.py --names 2000000 --feeds 5 --no-peer --apart
run console bench/console.py
run querylog bench/querylog.py
