#!/usr/bin/env bash
# The gateway's CPU instructions per streamed request, counted by valgrind (callgrind): the same
# figure run after run (within 0.3 %), where the CPU seconds of section 1 move by 5 % with the
# machine's load. For a before/after of a change to the request path, measure both checkouts:
#
#   bash bench/instructions.sh [ASKS]        # default 300 asks (about 20 s), after 100 not counted
#   git worktree add /tmp/before <commit>    # the gateway of another commit (its own venv, if its
#   SERVICE=/tmp/before/service PYTHON=/tmp/before-venv/bin/python bash bench/instructions.sh
#                                            # dependencies differ), measured by this script
#
# Each ask is section 1's: a POST to the gateway's stream route, 4 tokens from the lite upstream,
# read to its `end`. Needs valgrind (Debian: valgrind). callgrind_annotate reads the output it names.
set -euo pipefail
cd "$(dirname "$0")/.."
asks=${1:-300}
python=.venv/bin/python  # the upstream and the client
gateway_python=${PYTHON:-$python}
service=${SERVICE:-$PWD/service}
out=$(mktemp -d)
port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
upstream_port=$(port)
gateway_port=$(port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$python" bench/servers.py lite --port "$upstream_port" & pids+=($!)
# Counting starts off (--instr-atstart=no): the start-up and the warm-up asks are not counted.
FLOWISE_URL="http://127.0.0.1:$upstream_port" PYTHONPATH="$service" PYTHONHASHSEED=0 \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
  "$gateway_python" -m flowise_sse serve --host 127.0.0.1 --port "$gateway_port" --log-level error 2>"$out/valgrind.log" &
gateway=$!
pids+=("$gateway")
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$gateway_port/readyz" >/dev/null && break
  sleep 0.5
done
ask() {
  "$python" - "$gateway_port" "$1" <<'PY'
import sys

import httpx

sys.path.insert(0, "bench")
from common import GATEWAY_PATH, prediction

body = httpx.Request("POST", "/", json=prediction(["Hello", " from", " the", " bench"])).content
with httpx.Client(base_url=f"http://127.0.0.1:{sys.argv[1]}", timeout=60) as client:
    for _ in range(int(sys.argv[2])):
        answer = client.post(GATEWAY_PATH, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200 and "event: end" in answer.text, answer.text[:300]
PY
}
ask 100
callgrind_control --instr=on "$gateway" >/dev/null
ask "$asks"
callgrind_control --instr=off "$gateway" >/dev/null
callgrind_control --dump "$gateway" >/dev/null 2>&1
total=$(grep -h '^totals:' "$out"/callgrind.out* | sort -k2 -n | tail -1 | cut -d' ' -f2)
echo "$(git -C "$service" rev-parse --short HEAD)$(git -C "$service" diff --quiet HEAD -- . || echo '+changes'):" \
  "$((total / asks)) instructions per request ($asks asks; callgrind output in $out)"
