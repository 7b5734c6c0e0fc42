#!/bin/sh
# Mirror throughput on loopback: one curl stream of SIZE_MB from `lawchatd mirror DIR`, then the
# same file through a second mirror with --upstream pointing at the first (the first request
# fills it; the second is served from its DIR). Usage: bench/mirror.sh [SIZE_MB] (default 1024).
set -eu
SIZE_MB=${1:-1024}
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'kill $UP $OFFICE 2>/dev/null; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/hub/org/repo" "$TMP/office"
{ printf 'GGUF\003\000\000\000'; head -c 16 /dev/zero; head -c $((SIZE_MB << 20)) /dev/urandom; } \
    > "$TMP/hub/org/repo/m.gguf"
sha256sum "$TMP/hub/org/repo/m.gguf" | cut -d' ' -f1 > "$TMP/hub/org/repo/m.gguf.sha256"
$PY -m lawchatd mirror "$TMP/hub" --port 8991 2>"$TMP/up.log" & UP=$!
$PY -m lawchatd mirror "$TMP/office" --port 8992 --upstream http://127.0.0.1:8991 2>"$TMP/office.log" & OFFICE=$!
sleep 2
run() {  # label url
    curl -sS -L -o /dev/null -w "$1: %{size_download} bytes in %{time_total} s = %{speed_download} B/s\n" "$2"
}
run "mirror DIR" http://127.0.0.1:8991/org/repo/resolve/main/m.gguf
run "mirror DIR again" http://127.0.0.1:8991/org/repo/resolve/main/m.gguf
run "pull-through, first request (fetching)" http://127.0.0.1:8992/org/repo/resolve/main/m.gguf
sleep 1
run "pull-through, from its DIR" http://127.0.0.1:8992/org/repo/resolve/main/m.gguf
cmp "$TMP/hub/org/repo/m.gguf" "$TMP/office/org/repo/m.gguf" && echo "office copy identical"
