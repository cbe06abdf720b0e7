#!/usr/bin/env bash
# Footprint of the idle agent and latency of GET /health on loopback.
#
#   1. idle: VmRSS / VmHWM from /proc/PID/status, CPU = (utime+stime) delta
#      from /proc/PID/stat over IDLE_SECS of wall time;
#   2. paced: ~1,000 req/s over one keep-alive connection (a small Python
#      client, 1 ms schedule); latency is measured from the scheduled send
#      time, so a slow answer also counts against the requests queued behind
#      it (no coordinated omission). It includes the Python client's own
#      overhead, so it is an upper bound on the server's share;
#   3. saturation: `wrk -t1 -c4 -d${LOAD_SECS}s --latency` (Debian's wrk has
#      no fixed-rate mode): p99 at the maximum rate bounds p99 at 1,000 req/s
#      from above;
#   4. VmRSS / VmHWM again after the load.
#
# Usage: benches/agent.sh [--two-site]
#   default     one [sites.*] entry: no failover driver, no probes
#   --two-site  two throwaway PostgreSQL clusters as the sites' databases; the
#               agent (site "primary", failover mode "notify") runs the driver
#               and probes both databases every second
# Environment: IDLE_SECS (30), LOAD_SECS (15), PORT (19750), RATE (1000).
set -euo pipefail
cd "$(dirname "$0")/.."

two_site=false
case "${1:-}" in
'') ;;
--two-site) two_site=true ;;
*) echo "usage: $0 [--two-site]" >&2; exit 2 ;;
esac
IDLE_SECS=${IDLE_SECS:-30}
LOAD_SECS=${LOAD_SECS:-15}
PORT=${PORT:-19750}
RATE=${RATE:-1000}

if ! command -v wrk >/dev/null; then
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -qq wrk >/dev/null 2>&1 ||
        { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq wrk >/dev/null; }
fi
cargo build -q --release -p warmspare-agentd
agent_bin=target/release/warmspare-agent

tmp=$(mktemp -d)
pgdir=""
agent_pid=""
pg_ctl=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
    if [ -n "$pgdir" ]; then
        for d in "$pgdir"/a "$pgdir"/b; do
            [ -f "$d/postmaster.pid" ] &&
                runuser -u postgres -- "$pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
        done
        rm -rf "$pgdir"
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/repo"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/token"
chmod 600 "$tmp/token"

if $two_site; then
    [ "$(id -u)" = 0 ] || { echo "--two-site needs root (runuser -u postgres)" >&2; exit 1; }
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    pg_ctl=$bindir/pg_ctl
    pgdir=$(mktemp -d /tmp/warmspare-bench-pg.XXXXXX)
    chown postgres "$pgdir"
    db_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    declare -A ports
    for n in a b; do
        ports[$n]=$(db_port)
        runuser -u postgres -- "$bindir/initdb" -A trust -U postgres -D "$pgdir/$n" >/dev/null
        runuser -u postgres -- "$pg_ctl" -D "$pgdir/$n" -l "$pgdir/$n.log" -w -o \
            "-p ${ports[$n]} -k $pgdir -c listen_addresses=127.0.0.1" start >/dev/null
    done
    cat >"$tmp/agent.toml" <<EOF
site = "primary"
[repository]
url = "file://$tmp/repo"
[sites.primary]
database = "postgres://postgres@127.0.0.1:${ports[a]}/postgres"
[sites.spare]
database = "postgres://postgres@127.0.0.1:${ports[b]}/postgres"
[failover]
mode = "notify"
[agent]
listen = "127.0.0.1:$PORT"
token_file = "$tmp/token"
EOF
    setup="two sites: failover driver + probes of 2 PostgreSQL clusters (notify mode)"
else
    cat >"$tmp/agent.toml" <<EOF
site = "primary"
[repository]
url = "file://$tmp/repo"
[sites.primary]
database = "postgres://postgres@127.0.0.1:1/postgres"
[agent]
listen = "127.0.0.1:$PORT"
token_file = "$tmp/token"
EOF
    setup="one site: no failover driver, no probes, no schedules"
fi

url=http://127.0.0.1:$PORT/health
if curl -s -o /dev/null "$url"; then
    echo "port $PORT is already in use; set PORT" >&2
    exit 1
fi
"$agent_bin" --config "$tmp/agent.toml" --log-format json >"$tmp/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "$url" && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$tmp/agent.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf -o /dev/null "$url" || { echo "agent did not answer /health" >&2; cat "$tmp/agent.log" >&2; exit 1; }
if $two_site; then
    # let the driver's first probes settle before measuring
    sleep 3
fi

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$agent_pid/status"; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }
ticks() { sed 's/.*) //' "/proc/$agent_pid/stat" | awk '{ print $12 + $13 }'; }
hz=$(getconf CLK_TCK)

echo "agent pid $agent_pid, $setup; idle for ${IDLE_SECS}s ..." >&2
t0=$(date +%s.%N); c0=$(ticks)
sleep "$IDLE_SECS"
t1=$(date +%s.%N); c1=$(ticks)
idle_rss=$(kib VmRSS); idle_hwm=$(kib VmHWM); threads=$(kib Threads)
idle_cpu=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
    'BEGIN { printf "%.3f", (b - a) / hz / (t1 - t0) * 100 }')
probes=$(curl -s "http://127.0.0.1:$PORT/metrics" | grep '^warmspare_probe_up' || true)
driver=$(curl -s "http://127.0.0.1:$PORT/status" |
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin).get("failover")))')

echo "paced: $RATE req/s for ${LOAD_SECS}s ..." >&2
cat >"$tmp/paced.py" <<'EOF'
import socket, sys, time
port, rate, secs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def get():
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("unexpected answer: " + head.split(b"\r\n")[0].decode())
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
for _ in range(200):  # warm-up
    get()
n = int(rate * secs); step = 1.0 / rate
lat = []; svc = []
start = time.perf_counter()
for i in range(n):
    due = start + i * step
    while True:
        d = due - time.perf_counter()
        if d <= 0:
            break
        if d > 0.0002:
            time.sleep(d - 0.0001)
    sent = time.perf_counter()
    get()
    done = time.perf_counter()
    lat.append(done - due); svc.append(done - sent)
elapsed = time.perf_counter() - start
lat.sort(); svc.sort()
q = lambda a, p: a[min(len(a) - 1, int(p * len(a)))] * 1000
print(f"{n / elapsed:.0f} {q(lat, .5):.3f} {q(lat, .99):.3f} {q(lat, .999):.3f} {lat[-1] * 1000:.3f} "
      f"{q(svc, .5):.3f} {q(svc, .99):.3f}")
EOF
read -r p_rate p_p50 p_p99 p_p999 p_max s_p50 s_p99 < <(python3 "$tmp/paced.py" "$PORT" "$RATE" "$LOAD_SECS")

echo "saturation: wrk -t1 -c4 -d${LOAD_SECS}s ..." >&2
wrk -t1 -c4 -d"${LOAD_SECS}s" --latency "$url" >"$tmp/wrk.txt"
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'; }
w_rate=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$tmp/wrk.txt")
w_p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$tmp/wrk.txt")")
w_p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$tmp/wrk.txt")")
w_max=$(to_ms "$(awk '$1 == "Latency" { print $4 }' "$tmp/wrk.txt")")
w_err=$(awk '/Non-2xx|Socket errors/' "$tmp/wrk.txt")
load_rss=$(kib VmRSS); load_hwm=$(kib VmHWM)
kill -0 "$agent_pid" || { echo "agent died" >&2; exit 1; }

verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v < t ? "PASS" : "MISS") }'; }
echo
echo "warmspare-agent, $setup; $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-42s %28s %8s %s\n' metric measured target result
printf '%-42s %28s %8s %s\n' "idle VmRSS (MiB)" "$(mib "$idle_rss")" "< 30" "$(verdict "$(mib "$idle_rss")" 30)"
printf '%-42s %28s %8s %s\n' "idle VmHWM (MiB)" "$(mib "$idle_hwm")" "" ""
printf '%-42s %28s %8s %s\n' "idle CPU over ${IDLE_SECS}s (%)" "$idle_cpu" "< 1" "$(verdict "$idle_cpu" 1)"
printf '%-42s %28s %8s %s\n' "threads" "$threads" "" ""
printf '%-42s %28s %8s %s\n' "paced: achieved rate (req/s)" "$p_rate" "" ""
printf '%-42s %28s %8s %s\n' "paced: p50 / p99 / p99.9 / max (ms)" "$p_p50 / $p_p99 / $p_p999 / $p_max" "" ""
printf '%-42s %28s %8s %s\n' "paced: /health p99 at ~$RATE req/s (ms)" "$p_p99" "< 5" "$(verdict "$p_p99" 5)"
printf '%-42s %28s %8s %s\n' "paced: send-to-answer p50 / p99 (ms)" "$s_p50 / $s_p99" "" ""
printf '%-42s %28s %8s %s\n' "wrk: max rate (req/s)" "$w_rate" "" ""
printf '%-42s %28s %8s %s\n' "wrk: p50 / p99 / max (ms)" "$w_p50 / $w_p99 / $w_max" "" ""
printf '%-42s %28s %8s %s\n' "wrk: p99 at max rate, bounds 1k/s (ms)" "$w_p99" "< 5" "$(verdict "$w_p99" 5)"
printf '%-42s %28s %8s %s\n' "after load VmRSS / VmHWM (MiB)" "$(mib "$load_rss") / $(mib "$load_hwm")" "" ""
[ -z "$w_err" ] || echo "wrk: $w_err"
echo "failover (from /status after idling): $driver"
[ -z "$probes" ] || echo "$probes"
