#!/usr/bin/env bash
# Failover time with the shipped defaults ([failover] lease_ttl 6s,
# interval 1s): two lease drivers in one process, a PostgreSQL primary and a
# streaming standby (pg_basebackup -R), the lease on moto S3 on loopback.
# Each run kills the primary's driver and its postmaster (SIGKILL) at a
# random phase of the renewal cycle and measures the time until the spare
# accepts its first write. Prints each run and min/median/max.
#
# Usage: benches/failover.sh [RUNS]      (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export WARMSPARE_REQUIRE_S3=1
export WARMSPARE_FAILOVER_RUNS="${1:-20}"
# The debug build: the figure is dominated by the lease timing, not CPU.
cargo test -q -p warmspare-failover --test it -- \
    --ignored --exact e2e::failover_time_with_defaults --nocapture 2>&1 |
    grep -E '^(run [0-9]+:|failover time)'
