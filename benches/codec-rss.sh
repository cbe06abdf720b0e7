#!/usr/bin/env bash
# Peak memory of the streaming codec: 1 GiB put + get through the filesystem
# backend and through S3 multipart upload (moto on loopback). Each run is
# alone in its test process, so the process's VmHWM is the codec's peak.
#
# Usage: benches/codec-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps >/dev/null
export WARMSPARE_REQUIRE_S3=1
for test in codec::one_gib_in_bounded_memory codec::one_gib_in_bounded_memory_s3; do
    cargo test -q --release -p warmspare-store --test it -- \
        --ignored --exact "$test" --nocapture 2>&1 | grep -E '^peak RSS' || {
        echo "$test failed" >&2
        exit 1
    }
done
