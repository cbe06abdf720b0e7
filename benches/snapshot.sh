#!/usr/bin/env bash
# Database snapshots against their anchors, in one run on one machine:
#
#   logical backup   warmspare backup db      vs pg_dump | gzip (manual recipe)
#                                             vs pg_dump > /dev/null (floor)
#                    (also --jobs 2: directory format, pg_dump -j 2)
#   restore          warmspare restore db latest --to URL (checks + swap)
#                                             vs gunzip | psql
#                    (also --jobs 2 --parallel-load, --jobs 2, and the
#                    directory-format snapshot with --jobs 2; the time of
#                    each restore step is printed)
#   physical backup  warmspare backup db --physical vs pgbackrest backup
#                    (posix repository, compress-type=zst, process-max=1)
#
# A PostgreSQL cluster with `pgbench -i -s SCALE`, archive_mode=on and
# archive_command = 'warmspare --config CFG wal push %p' into a file://
# repository; a second cluster (no archiving) is the warm spare. Every
# measured command runs under /usr/bin/time -f '%e %M' (wall seconds, peak
# RSS in KiB of the largest process of the command's tree).
#
# Every measurement is repeated REPEAT times (interleaved with its anchors)
# and the median is reported, with the range.
#
# Usage: benches/snapshot.sh [SCALE]      (default 50; 5 for a quick run)
# Env:   WARMSPARE_BIN   the binary [target/release/warmspare, built if missing]
#        PG_BIN          PostgreSQL's bin dir [/usr/lib/postgresql/15/bin]
#        REPEAT          repetitions [3]
#        KEEP=1          keep the work directory
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-50}
REPEAT=${REPEAT:-3}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BIN=${WARMSPARE_BIN:-$PWD/target/release/warmspare}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need pgbackrest || ! need zstd || ! need jq || [ ! -x /usr/bin/time ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q pgbackrest time zstd jq >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q pgbackrest time zstd jq >/dev/null; }
fi
[ -x "$BIN" ] || cargo build -q --release -p warmspare-cli

WORK=$(mktemp -d /tmp/wsb-snap.XXXXXX)
chmod 755 "$WORK"
# Timestamps stderr lines (to time each step of a restore); "end" at EOF.
cat >"$WORK/stamp" <<'EOF'
#!/bin/sh
exec perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } printf "%.3f %s", time, $_; END { printf "%.3f end\n", time }'
EOF
chmod 755 "$WORK/stamp"
# A private copy of the binary: postgres must be able to run it, and a
# rebuild during the run must not change what is measured.
install -m 755 "$BIN" "$WORK/wsbin"
BIN=$WORK/wsbin
chown postgres: "$WORK"
PORT=$((20000 + RANDOM % 20000))
SPARE_PORT=$((PORT + 1))
PG="runuser -u postgres --"

cleanup() {
    set +e
    $PG "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1
    $PG "$PG_BIN/pg_ctl" -D "$WORK/spare" -m immediate stop >/dev/null 2>&1
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '== %s\n' "$*" >&2; }

# run NAME CMD...: time CMD as postgres; record "NAME seconds rss_kib".
run() {
    local name=$1
    shift
    log "$name"
    $PG /usr/bin/time -f '%e %M' -o "$WORK/time.$name" "$@"
    echo "$name $(cat "$WORK/time.$name")" >>"$WORK/results"
}

initcluster() { # DIR PORT
    $PG "$PG_BIN/initdb" -D "$1" -A trust -U postgres --no-sync >/dev/null
    cat >>"$1/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_wal_size = 4GB
wal_level = replica
max_wal_senders = 4
EOF
}

log "clusters in $WORK (PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), scale $SCALE)"
initcluster "$WORK/data" "$PORT"
initcluster "$WORK/spare" "$SPARE_PORT"
mkdir -p "$WORK/repo" "$WORK/out"
chown postgres: "$WORK/repo" "$WORK/out"
CFG=$WORK/ws.toml
cat >"$CFG" <<EOF
site = "primary"
[repository]
url = "file://$WORK/repo"
[sites.primary]
database = "postgres://postgres@127.0.0.1:$PORT/bench"
[sites.spare]
database = "postgres://postgres@127.0.0.1:$SPARE_PORT/bench"
EOF
chmod 644 "$CFG"
WAL_WARMSPARE="$BIN --config $CFG wal push %p"
cat >>"$WORK/data/postgresql.conf" <<EOF
archive_mode = on
archive_command = '$WAL_WARMSPARE'
EOF
$PG "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/data.log" -w start >/dev/null
$PG "$PG_BIN/pg_ctl" -D "$WORK/spare" -l "$WORK/spare.log" -w start >/dev/null
export PGHOST=127.0.0.1 PGUSER=postgres
psql() { $PG "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql -p "$PORT" -d postgres -c 'create database bench'
log "pgbench -i -s $SCALE"
$PG "$PG_BIN/pgbench" -i -q -s "$SCALE" -p "$PORT" bench 2>&1 | tail -1 >&2
psql -p "$PORT" -d bench -c 'vacuum analyze' -c 'checkpoint'

# Wait for the archiver to drain (the load generated many segments), so
# that it does not compete with the measured commands.
drain() {
    local n
    for _ in $(seq 1 600); do
        psql -p "$PORT" -d postgres -c 'select pg_switch_wal()' >/dev/null 2>&1 || true
        n=$(ls "$WORK/data/pg_wal/archive_status" | grep -c '\.ready$' || true)
        [ "$n" -eq 0 ] && return 0
        sleep 1
    done
    echo "archiver did not drain" >&2
    return 1
}
drain
DBSIZE=$(psql -p "$PORT" -d bench -Atc "select pg_database_size('bench')")

# --- logical backup --------------------------------------------------------
DUMP="$PG_BIN/pg_dump -h 127.0.0.1 -p $PORT -U postgres bench"
for _ in $(seq "$REPEAT"); do
    run floor_plain sh -c "$DUMP > /dev/null"
    run floor_custom sh -c "$DUMP --format=custom --compress=0 > /dev/null"
    run pgdump_gzip sh -c "$DUMP | gzip > $WORK/out/bench.sql.gz"
    # Reference for size: the stream warmspare compresses, through zstd -3
    # (warmspare's default level) in one frame.
    run pgdump_zstd sh -c "$DUMP --format=custom --compress=0 | zstd -q -3 -c > $WORK/out/bench.dump.zst"
    run ws_backup sh -c "$BIN --config $CFG --json backup db > $WORK/out/backup.json"
    run ws_backup_j2 sh -c "$BIN --config $CFG --json backup db --jobs 2 --spool-dir $WORK/out \
        > $WORK/out/backup_j2.json"
done
SIZE_GZIP=$(stat -c %s "$WORK/out/bench.sql.gz")
SIZE_ZSTD=$(stat -c %s "$WORK/out/bench.dump.zst")
SIZE_WS=$(jq -r '.stored_size // .size' "$WORK/out/backup.json")
SIZE_WS_J2=$(jq -r '.stored_size // .size' "$WORK/out/backup_j2.json")
SNAP=$(jq -r '.id' "$WORK/out/backup.json")
SNAP_J2=$(jq -r '.id' "$WORK/out/backup_j2.json")

# --- restore into the spare -----------------------------------------------
# The spare already has a "bench" database, so warmspare's run includes the
# swap (terminate sessions, rename) and keeps the replaced copy.
#
# Every restore starts from a clean server: `clean` checkpoints the spare
# and syncs the page cache. Without it a command would pay for writing
# out what the one before it left dirty (warmspare's swap drops the
# previous copy, and DROP DATABASE forces a checkpoint: run right after
# gunzip | psql, it wrote out psql's 750 MB as well as its own).
clean() {
    psql -p "$SPARE_PORT" -d postgres -c checkpoint
    sync
}
# The server's floor for a COPY-based restore with two connections: the
# pgbench_accounts rows (all but a few KB of the data) split into two
# files loaded by two `psql \copy` at once, then its primary key, with no
# client work, no checks and no swap (the other tables are a few hundred
# rows). No tool that restores through COPY on this server can be faster.
gunzip -c "$WORK/out/bench.sql.gz" |
    awk '/^COPY public.pgbench_accounts /{ f = 1; next } f && /^\\\.$/ { f = 0 } f' >"$WORK/out/accounts.txt"
split -n l/2 "$WORK/out/accounts.txt" "$WORK/out/accounts.part."
rm "$WORK/out/accounts.txt"
chown postgres: "$WORK"/out/accounts.part.*
COPY_SESSION="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $SPARE_PORT -U postgres -d floor"
cat >"$WORK/floor.sh" <<FLOOR
#!/bin/sh
set -e
$COPY_SESSION -c "create table pgbench_accounts (aid int not null, bid int, abalance int, filler char(84))"
$COPY_SESSION -c "\\copy pgbench_accounts from '$WORK/out/accounts.part.aa'" & a=\$!
$COPY_SESSION -c "\\copy pgbench_accounts from '$WORK/out/accounts.part.ab'" & b=\$!
wait \$a
wait \$b
$COPY_SESSION -c "alter table only pgbench_accounts add constraint pgbench_accounts_pkey primary key (aid)"
FLOOR
chmod 755 "$WORK/floor.sh"
psql -p "$SPARE_PORT" -d postgres -c 'create database bench'
for i in $(seq "$REPEAT"); do
    psql -p "$SPARE_PORT" -d postgres -c 'drop database if exists floor' -c 'create database floor'
    clean
    run floor_copy2 "$WORK/floor.sh"
    psql -p "$SPARE_PORT" -d postgres -c 'drop database if exists manual' -c 'create database manual'
    clean
    run gunzip_psql sh -c "gunzip -c $WORK/out/bench.sql.gz | $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p $SPARE_PORT -U postgres -d manual > /dev/null"
    clean
    # stderr (the steps) timestamped into steps.ws_restore.N
    run ws_restore sh -c "$BIN --config $CFG restore db $SNAP \
        --to postgres://postgres@127.0.0.1:$SPARE_PORT/bench 2>&1 > $WORK/out/restore.txt \
        | $WORK/stamp > $WORK/out/steps.ws_restore.$i"
    cat "$WORK/out/restore.txt" >&2
    # Diagnostic: the custom-format stream through plain pg_restore, one
    # job, into a fresh database (no checks, no swap).
    psql -p "$SPARE_PORT" -d postgres -c 'drop database if exists plain_restore' \
        -c 'create database plain_restore'
    clean
    run zstd_pg_restore sh -c "zstd -q -dc $WORK/out/bench.dump.zst | $PG_BIN/pg_restore \
        -h 127.0.0.1 -p $SPARE_PORT -U postgres -d plain_restore"
    # The parallel loader: the same snapshot streamed (no spool), the table
    # data over two COPY connections (pre-data, data, post-data passes).
    clean
    run ws_restore_par sh -c "$BIN --config $CFG restore db $SNAP --jobs 2 --parallel-load \
        --to postgres://postgres@127.0.0.1:$SPARE_PORT/bench 2>&1 > $WORK/out/restore.txt \
        | $WORK/stamp > $WORK/out/steps.ws_restore_par.$i"
    # The same with two pg_restore jobs (the verified dump is spooled first).
    clean
    run ws_restore_j2 sh -c "$BIN --config $CFG restore db $SNAP --jobs 2 --spool-dir $WORK/out \
        --to postgres://postgres@127.0.0.1:$SPARE_PORT/bench 2>&1 > $WORK/out/restore.txt \
        | $WORK/stamp > $WORK/out/steps.ws_restore_j2.$i"
    # The directory-format snapshot: objects downloaded in parallel, then
    # pg_restore -j 2.
    clean
    run ws_restore_dir sh -c "$BIN --config $CFG restore db $SNAP_J2 --jobs 2 --spool-dir $WORK/out \
        --to postgres://postgres@127.0.0.1:$SPARE_PORT/bench 2>&1 > $WORK/out/restore.txt \
        | $WORK/stamp > $WORK/out/steps.ws_restore_dir.$i"
done
for db in manual bench; do
    n=$(psql -p "$SPARE_PORT" -d "$db" -Atc 'select count(*) from pgbench_accounts')
    [ "$n" -eq $((SCALE * 100000)) ] || { echo "restore into $db: $n rows" >&2; exit 1; }
done

# --- physical backup -------------------------------------------------------
PHYSICAL=no
if "$BIN" backup db --help 2>/dev/null | grep -q -- '--physical'; then
    PHYSICAL=yes
    for _ in $(seq "$REPEAT"); do
        drain
        run ws_physical sh -c "$BIN --config $CFG --json backup db --physical > $WORK/out/physical.json"
    done
    SIZE_WS_PHYS=$(jq -r '.stored_size // .size' "$WORK/out/physical.json")
else
    log "warmspare backup db --physical: not in this build; skipped"
fi

BR_CONF=$WORK/pgbackrest.conf
mkdir -p "$WORK/pgbr" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
chown postgres: "$WORK/pgbr" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
cat >"$BR_CONF" <<EOF
[global]
repo1-type=posix
repo1-path=$WORK/pgbr
repo1-retention-full=99
compress-type=zst
process-max=1
start-fast=y
log-level-console=warn
log-level-file=off
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool

[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-host-user=postgres
pg1-user=postgres
pg1-socket-path=$WORK
EOF
chmod 644 "$BR_CONF"
BR="pgbackrest --config=$BR_CONF --stanza=bench"
$PG $BR stanza-create >&2
psql -p "$PORT" -d postgres -c "alter system set archive_command = '$BR archive-push %p'" \
    -c 'select pg_reload_conf()' >/dev/null
$PG $BR check >&2
for _ in $(seq "$REPEAT"); do
    drain
    run pgbackrest_backup $BR --type=full backup
done
SIZE_BR=$($PG $BR info --output=json | jq '.[0].backup[-1].info.repository.delta')
psql -p "$PORT" -d postgres -c "alter system set archive_command = '$WAL_WARMSPARE'" \
    -c 'select pg_reload_conf()' >/dev/null

# --- report ---------------------------------------------------------------
# median seconds, max RSS, and the range of the repetitions
t() { awk -v n="$1" '$1 == n { print $2 }' "$WORK/results" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
m() { awk -v n="$1" '$1 == n { print $3 }' "$WORK/results" | sort -n | tail -1; }
range() { awk -v n="$1" '$1 == n { print $2 }' "$WORK/results" | sort -n | awk 'NR == 1 { a = $1 } END { printf "%s-%s", a, $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
row() { # NAME LABEL SIZE ANCHOR [SIZE_ANCHOR]
    printf '%-36s %8s %-11s %10s %9s   %-22s %6s %6s\n' "$2" "$(t "$1")" "$(range "$1")" \
        "$([ -n "$3" ] && mib "$3" || echo -)" "$(awk -v k="$(m "$1")" 'BEGIN{printf "%.1f", k/1024}')" \
        "${4:+vs $4}" "${4:+$(ratio "$(t "$1")" "$(t "$4")")}" \
        "$([ -n "${5:-}" ] && ratio "$3" "$5" || true)"
}
echo
echo "snapshot.sh: scale $SCALE, database $(mib "$DBSIZE") MiB, $(nproc) cores, $(date -u +%FT%TZ)"
echo "median of $REPEAT runs (range); time× and size× are this / anchor"
printf '%-36s %8s %-11s %10s %9s   %-22s %6s %6s\n' command seconds range 'size MiB' 'RSS MiB' anchor time× size×
row floor_plain 'pg_dump > /dev/null (floor)' ''
row floor_custom 'pg_dump -Fc -Z0 > /dev/null' '' floor_plain
row pgdump_gzip 'pg_dump | gzip' "$SIZE_GZIP" floor_plain
row pgdump_zstd 'pg_dump -Fc -Z0 | zstd -3' "$SIZE_ZSTD" floor_plain
row ws_backup 'warmspare backup db' "$SIZE_WS" floor_plain
row ws_backup '  (same, vs the manual recipe)' "$SIZE_WS" pgdump_gzip "$SIZE_GZIP"
row ws_backup_j2 'warmspare backup db --jobs 2' "$SIZE_WS_J2" floor_plain
row gunzip_psql 'gunzip | psql' ''
row floor_copy2 'server floor: 2 × \copy + primary key' '' gunzip_psql
row ws_restore 'warmspare restore db (check+swap)' '' gunzip_psql
row ws_restore_par '  (same, --jobs 2 --parallel-load)' '' gunzip_psql
row ws_restore_j2 '  (same, --jobs 2)' '' gunzip_psql
row ws_restore_dir '  (--jobs 2 snapshot, --jobs 2)' '' gunzip_psql
row zstd_pg_restore 'zstd -dc | pg_restore (diagnostic)' '' gunzip_psql
if [ "$PHYSICAL" = yes ]; then
    row pgbackrest_backup 'pgbackrest backup (zst, 1 process)' "$SIZE_BR"
    row ws_physical 'warmspare backup db --physical' "$SIZE_WS_PHYS" pgbackrest_backup "$SIZE_BR"
else
    row pgbackrest_backup 'pgbackrest backup (zst, 1 process)' "$SIZE_BR"
    echo 'warmspare backup db --physical: not in this build (skipped)'
fi
echo
echo "restore steps, median seconds over the runs (from the timestamped progress lines):"
for kind in ws_restore ws_restore_par ws_restore_j2 ws_restore_dir; do
    # "TS restore: STEP" starts a step, "TS end" ends the last: one
    # "N STEP SECONDS" line per step and run (N: the step's position).
    for f in "$WORK"/out/steps.$kind.*; do
        awk 'NF == 3 && $2 == "restore:" { if (s != "") print n, s, $1 - t; n++; s = $3; t = $1 }
             $2 == "end" { if (s != "") print n, s, $1 - t; s = "" }' "$f"
    done >"$WORK/out/durations.$kind"
    line=$(printf '%-16s' "$kind")
    for step in $(sort -n -k1,1 -u "$WORK/out/durations.$kind" | awk '{ print $2 }'); do
        med=$(awk -v s="$step" '$2 == s { print $3 }' "$WORK/out/durations.$kind" | sort -n |
            awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] }')
        line="$line $step $med"
    done
    echo "$line"
done
echo
echo "bound: a COPY-based restore on this server takes at least the server floor,"
echo "  $(ratio "$(t floor_copy2)" "$(t gunzip_psql)")× of gunzip | psql with no client work, checks or swap;"
echo "  warmspare --jobs 2 --parallel-load is $(ratio "$(t ws_restore_par)" "$(t floor_copy2)")× that floor"
echo "targets (issue 3): backup ≤ 1.15× floor, size ≤ gzip; restore ≤ 0.8× gunzip|psql;"
echo "physical ≤ 1.1× pgbackrest; peak RSS < 256 MiB"
