#!/usr/bin/env bash
# Artifact mirror against its anchors, in one run on loopback:
#
#   warmspare sync --from URL --to URL --json   (SHA-256 computed and checked)
#   rclone sync, default (--transfers 4 --checkers 8) and tuned
#     (--transfers 16 --checkers 32); no-change passes also with --size-only
#   cp -r, cp -r && sync, openssl dgst -sha256  (floors of the first copy)
#
#   (a) first copy of SMALL_COUNT x 64 KiB, then LARGE_COUNT x LARGE_MB MiB
#   (b) a no-change pass over NOCHANGE_COUNT objects of 4 KiB
#   (c) the same tree with 1% of its objects rewritten (same size, new bytes)
#
# filesystem -> filesystem always; filesystem -> S3 (moto on loopback) with
# S3_SMALL small objects and one S3_LARGE_MB object unless S3=0. moto is an
# in-memory Python server: it bounds the S3 figures, not the tools.
#
# Usage: benches/sync.sh [SMALL_COUNT LARGE_COUNT LARGE_MB NOCHANGE_COUNT]
#        defaults 10000 8 256 100000 (issue 4); quick: 2000 2 256 20000
# Env:   S3=0 (skip S3), S3_SMALL [1000], S3_LARGE_MB [64], WARMSPARE_BIN,
#        KEEP=1 (keep the work directory under /tmp)
# Prints one line per timed command: seconds, objects/s, peak RSS, the RSS
# budget of issue 4, speed-ups against the anchors and warmspare's counters.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${1:-10000}
LARGE=${2:-8}
LARGE_MB=${3:-256}
NOCHANGE=${4:-100000}
S3=${S3:-1}
S3_SMALL=${S3_SMALL:-1000}
S3_LARGE_MB=${S3_LARGE_MB:-64}
BIN=${WARMSPARE_BIN:-$PWD/target/release/warmspare}
MOTO=$PWD/.venv/bin/moto_server

if ! command -v rclone >/dev/null || ! command -v jq >/dev/null || [ ! -x /usr/bin/time ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q rclone time jq >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q rclone time jq >/dev/null; }
fi
[ -x "$BIN" ] || cargo build -q --release -p warmspare-cli
[ "$S3" = 0 ] || [ -x "$MOTO" ] || ./scripts/install-deps >/dev/null

WORK=$(mktemp -d /tmp/wsb-sync.XXXXXX)
install -m 755 "$BIN" "$WORK/wsbin" # a rebuild during the run changes nothing
BIN=$WORK/wsbin
MOTO_PID=
cleanup() {
    set +e
    [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '== %s\n' "$*" >&2; }
: >"$WORK/results"

# run NAME OBJECTS CMD...: time CMD (stdout to $WORK/out.NAME); record
# "NAME seconds rss_kib objects". Dirty pages are written back first, so
# that one run's writes are not charged to the next.
run() {
    local name=$1 objects=$2 t0 t1
    shift 2
    sync
    log "$name"
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$WORK/time.$name" "$@" >"$WORK/out.$name" 2>"$WORK/err.$name" || {
        echo "$name failed:" >&2
        tail -5 "$WORK/err.$name" >&2
        exit 1
    }
    t1=$(date +%s.%N)
    echo "$name $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $(tail -1 "$WORK/time.$name") $objects" >>"$WORK/results"
}
printf '#!/bin/sh\nexec %s sync --json --from "$1" --to "$2"\n' "$BIN" >"$WORK/ws"
chmod 755 "$WORK/ws"
RC_DEFAULT="--transfers 4 --checkers 8"
RC_TUNED="--transfers 16 --checkers 32"
# jq on warmspare's --json summary
wsj() { jq -r "$2" "$WORK/out.$1"; }

gen() { # DIR COUNT BYTES: COUNT files of random bytes, 1000 per directory
    python3 - "$@" <<'EOF'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"{i // 1000:03d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"obj{i:07d}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
}
change() { # DIR: rewrite every 100th object, same size, new bytes
    python3 - "$1" <<'EOF'
import os, sys
n = 0
for dirpath, _, files in sorted(os.walk(sys.argv[1])):
    for name in sorted(files):
        if int(name[3:10]) % 100 == 0:
            p = os.path.join(dirpath, name)
            size = os.path.getsize(p)
            with open(p, "wb") as f:
                f.write(os.urandom(size))
            n += 1
print(n)
EOF
}

log "data in $WORK: $SMALL x 64 KiB, $LARGE x $LARGE_MB MiB, $NOCHANGE x 4 KiB"
gen "$WORK/small" "$SMALL" 65536
mkdir -p "$WORK/large"
for i in $(seq 1 "$LARGE"); do
    head -c "$((LARGE_MB << 20))" /dev/urandom >"$WORK/large/big$i.bin"
done
gen "$WORK/nc" "$NOCHANGE" 4096

# --- filesystem -> filesystem ----------------------------------------------
# Every tool copies into a directory of its own. The large copies (2 GiB
# each at the issue's scale) are removed after each run; the small ones
# only after both sets: ext4 without a journal avoids reusing inodes freed
# in the last 30 seconds, so creating 10,000 files right after deleting
# 10,000 costs several times more system time, and whoever runs next
# would pay for the previous tool's cleanup.
for set in small large; do
    n=$([ $set = small ] && echo "$SMALL" || echo "$LARGE")
    tidy() { [ $set = small ] || rm -rf "$@"; }
    run "fs_${set}_cp" "$n" cp -r "$WORK/$set" "$WORK/cp-$set"
    tidy "$WORK/cp-$set"
    # cp returns before the page cache is written back; warmspare makes
    # its copies durable (one syncfs) before its state record names them.
    # This floor includes the writeback.
    run "fs_${set}_cpsync" "$n" sh -c "cp -r $WORK/$set $WORK/cpsync-$set && sync"
    tidy "$WORK/cpsync-$set"
    run "fs_${set}_ws" "$n" "$WORK/ws" "file://$WORK/$set" "file://$WORK/ws-$set"
    tidy "$WORK/ws-$set"
    run "fs_${set}_rclone4" "$n" rclone sync $RC_DEFAULT "$WORK/$set" "$WORK/rc4-$set"
    tidy "$WORK/rc4-$set"
    run "fs_${set}_rclone16" "$n" rclone sync $RC_TUNED "$WORK/$set" "$WORK/rc16-$set"
    tidy "$WORK/rc16-$set"
done
rm -rf "$WORK"/*-small
# No verified copy is faster than hashing the bytes once (SHA-NI via openssl).
run fs_large_sha256 "$LARGE" sh -c "openssl dgst -sha256 $WORK/large/*"
[ "$(jq .copied "$WORK/out.fs_small_ws")" -eq "$SMALL" ] || { echo "warmspare copied $(jq .copied "$WORK/out.fs_small_ws") of $SMALL" >&2; exit 1; }

# (b) and (c): the target trees are seeded (warmspare by its own first copy,
# so that it has its state record; rclone's by cp -a, which keeps the mtimes
# rclone compares).
run fs_nc_first_ws "$NOCHANGE" "$WORK/ws" "file://$WORK/nc" "file://$WORK/ws-nc"
cp -a "$WORK/nc" "$WORK/rc4-nc"
cp -a "$WORK/nc" "$WORK/rc16-nc"
run fs_nochange_ws "$NOCHANGE" "$WORK/ws" "file://$WORK/nc" "file://$WORK/ws-nc"
run fs_nochange_rclone4 "$NOCHANGE" rclone sync $RC_DEFAULT "$WORK/nc" "$WORK/rc4-nc"
run fs_nochange_rclone16 "$NOCHANGE" rclone sync $RC_TUNED "$WORK/nc" "$WORK/rc16-nc"
run fs_nochange_rclone4_sizeonly "$NOCHANGE" rclone sync --size-only $RC_DEFAULT "$WORK/nc" "$WORK/rc4-nc"
run fs_nochange_rclone16_sizeonly "$NOCHANGE" rclone sync --size-only $RC_TUNED "$WORK/nc" "$WORK/rc16-nc"
[ "$(wsj fs_nochange_ws .copied)" -eq 0 ] || echo "warning: warmspare copied on a no-change pass" >&2
CHANGED=$(change "$WORK/nc")
log "changed $CHANGED objects"
run fs_changed_ws "$NOCHANGE" "$WORK/ws" "file://$WORK/nc" "file://$WORK/ws-nc"
run fs_changed_rclone4 "$NOCHANGE" rclone sync $RC_DEFAULT "$WORK/nc" "$WORK/rc4-nc"
run fs_changed_rclone16 "$NOCHANGE" rclone sync $RC_TUNED "$WORK/nc" "$WORK/rc16-nc"
[ "$(wsj fs_changed_ws .copied)" -eq "$CHANGED" ] ||
    echo "warning: warmspare copied $(wsj fs_changed_ws .copied) of $CHANGED changed objects" >&2
diff -rq "$WORK/nc" "$WORK/ws-nc" -x .warmspare >&2 || echo "warning: warmspare target differs" >&2

# --- filesystem -> S3 (moto) -----------------------------------------------
if [ "$S3" != 0 ]; then
    S3_PORT=$((20000 + RANDOM % 20000))
    "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$S3_PORT/" >/dev/null && break; sleep 0.2; done
    unset AWS_CA_BUNDLE # rclone fails on it ("unsupported transport"); plain http here
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
        AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ALLOW_HTTP=true
    export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other \
        RCLONE_CONFIG_S3_ENDPOINT=http://127.0.0.1:$S3_PORT RCLONE_CONFIG_S3_REGION=us-east-1 \
        RCLONE_CONFIG_S3_ACCESS_KEY_ID=testing RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=testing
    for b in ws rc4 rc16; do rclone mkdir "s3:$b-bench"; done
    gen "$WORK/s3small" "$S3_SMALL" 65536
    mkdir -p "$WORK/s3large"
    head -c "$((S3_LARGE_MB << 20))" /dev/urandom >"$WORK/s3large/big.bin"
    run s3_small_ws "$S3_SMALL" "$WORK/ws" "file://$WORK/s3small" s3://ws-bench/small
    run s3_small_rclone4 "$S3_SMALL" rclone sync $RC_DEFAULT "$WORK/s3small" s3:rc4-bench/small
    run s3_small_rclone16 "$S3_SMALL" rclone sync $RC_TUNED "$WORK/s3small" s3:rc16-bench/small
    run s3_large_ws 1 "$WORK/ws" "file://$WORK/s3large" s3://ws-bench/large
    run s3_large_rclone4 1 rclone sync $RC_DEFAULT "$WORK/s3large" s3:rc4-bench/large
    run s3_large_rclone16 1 rclone sync $RC_TUNED "$WORK/s3large" s3:rc16-bench/large
    run s3_nochange_ws "$S3_SMALL" "$WORK/ws" "file://$WORK/s3small" s3://ws-bench/small
    run s3_nochange_rclone4 "$S3_SMALL" rclone sync $RC_DEFAULT "$WORK/s3small" s3:rc4-bench/small
    run s3_nochange_rclone16 "$S3_SMALL" rclone sync $RC_TUNED "$WORK/s3small" s3:rc16-bench/small
    run s3_nochange_rclone4_sizeonly "$S3_SMALL" rclone sync --size-only $RC_DEFAULT "$WORK/s3small" s3:rc4-bench/small
    run s3_nochange_rclone16_sizeonly "$S3_SMALL" rclone sync --size-only $RC_TUNED "$WORK/s3small" s3:rc16-bench/small
    S3_CHANGED=$(change "$WORK/s3small")
    run s3_changed_ws "$S3_SMALL" "$WORK/ws" "file://$WORK/s3small" s3://ws-bench/small
    run s3_changed_rclone4 "$S3_SMALL" rclone sync $RC_DEFAULT "$WORK/s3small" s3:rc4-bench/small
    run s3_changed_rclone16 "$S3_SMALL" rclone sync $RC_TUNED "$WORK/s3small" s3:rc16-bench/small
    [ "$(wsj s3_changed_ws .copied)" -eq "$S3_CHANGED" ] ||
        echo "warning: warmspare copied $(wsj s3_changed_ws .copied) of $S3_CHANGED changed objects (S3)" >&2
fi

# --- report ----------------------------------------------------------------
f() { awk -v n="$1" -v c="$2" '$1 == n { print $c }' "$WORK/results"; }
# line NAME [ANCHOR...]: seconds, objects/s, peak RSS, RSS budget, then
# "anchor-time / this-time" for each anchor (> 1: this is faster), and
# warmspare's own counters.
line() {
    local n=$1 s rss objs extra= vs= a
    shift
    s=$(f "$n" 2)
    [ -n "$s" ] || return 0
    rss=$(f "$n" 3)
    objs=$(f "$n" 4)
    for a in "$@"; do
        [ -n "$(f "$a" 2)" ] && vs="$vs ${a#*_*_}:$(awk -v x="$(f "$a" 2)" -v y="$s" 'BEGIN { printf "%.2f", x / y }')"
    done
    case $n in *_ws) extra=$(jq -r '"copied \(.copied) skipped \(.skipped) hashed \(.hashed) read \(.bytes_read / 1048576 | floor) MiB"' "$WORK/out.$n") ;; esac
    printf '%-30s %8s %9s %8s %7s  %-44s %s\n' "$n" "$s" \
        "$(awk -v o="$objs" -v s="$s" 'BEGIN { printf "%.0f", (s > 0) ? o / s : 0 }')" \
        "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v o="$objs" 'BEGIN { printf "%.0f", 64 + 1.5 * o / 1024 }')" "${vs# }" "$extra"
}
echo
echo "sync.sh: $(nproc) cores, $(date -u +%FT%TZ); fs: $SMALL x 64 KiB, $LARGE x $LARGE_MB MiB," \
    "no-change/1% over $NOCHANGE x 4 KiB ($CHANGED changed)${S3_CHANGED:+; S3 (moto): $S3_SMALL x 64 KiB, 1 x $S3_LARGE_MB MiB, $S3_CHANGED changed}"
printf '%-30s %8s %9s %8s %7s  %-44s %s\n' run seconds objects/s 'RSS MiB' budget 'speed-up = anchor time / this time' ''
for p in fs_small fs_large; do
    for t in cp cpsync sha256 rclone4 rclone16; do line ${p}_$t; done
    line ${p}_ws ${p}_rclone4 ${p}_rclone16 ${p}_cp ${p}_cpsync
done
line fs_nc_first_ws
for p in fs_nochange s3_nochange; do
    for t in rclone4 rclone16 rclone4_sizeonly rclone16_sizeonly; do line ${p}_$t; done
    line ${p}_ws ${p}_rclone4 ${p}_rclone16 ${p}_rclone4_sizeonly ${p}_rclone16_sizeonly
done
for p in fs_changed s3_small s3_large s3_changed; do
    for t in rclone4 rclone16; do line ${p}_$t; done
    line ${p}_ws ${p}_rclone4 ${p}_rclone16
done
# A verified copy does the hashing and the copying: with both spread
# perfectly over every core it cannot take less than (hash + cp) / cores,
# which bounds the large-object speed-up vs cp on this machine. The hash
# time is the bytes at `openssl speed`'s SHA-256 rate on one core (no
# reads: `openssl dgst` above also pays for reading the files).
SHA_RATE=$(openssl speed -evp sha256 -bytes 262144 -seconds 2 2>/dev/null | awk '/^sha256/ { sub(/k$/, "", $2); print $2 * 1000 }')
if [ -n "$SHA_RATE" ] && [ -n "$(f fs_large_cp 2)" ]; then
    awk -v r="$SHA_RATE" -v bytes="$((LARGE * LARGE_MB << 20))" -v c="$(f fs_large_cp 2)" -v n="$(nproc)" 'BEGIN {
        h = bytes / r
        b = (h + c) / n
        printf "large: bound for any verified copy on %d cores = (SHA-256 at %.0f MB/s: %.2f s + cp %.2f s) / %d = %.2f s, a speed-up vs cp of at most %.2f\n", n, r / 1e6, h, c, n, b, c / b
    }'
fi
echo
echo "targets (issue 4): no-change ≥ 2× rclone's fastest; small objects ≥ 1.5× rclone's objects/s;"
echo "large: speed-up vs cp ≥ 0.9 (cp: page cache only; cpsync: written back); peak RSS < budget = 64 MiB + 1.5 KiB/object"
