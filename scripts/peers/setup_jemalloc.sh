#!/usr/bin/env bash
# jemalloc for `multillm serve` (server.allocator: auto): Debian's libjemalloc2, installed when it
# is missing and this runs as root with apt-get; else a note (the allocator tests then report the
# missing peer). Idempotent: a found library installs nothing.
set -euo pipefail
found() {
    local d
    for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
        [[ -f "$d/libjemalloc.so.2" ]] && return 0
    done
    return 1
}
if found; then
    exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends libjemalloc2 >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends libjemalloc2 >/dev/null; }
fi
if found; then
    echo "jemalloc: installed libjemalloc2"
else
    echo "jemalloc: libjemalloc.so.2 not found and not installable here (apt install libjemalloc2);" \
        "multillm serve runs on pymalloc" >&2
fi
