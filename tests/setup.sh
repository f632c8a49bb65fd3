#!/usr/bin/env bash
# Installs everything the test suite needs, from scratch: Debian packages (curl, redis-server,
# chromium, nginx, docker-compose, prometheus), the Python environment (.venv, with the test extra:
# the test tools and mkdocs for the documentation site), the openai npm SDK for the interop tests,
# the AI SDK and Codex CLI for the Responses API's tests, and real Flowise servers from npm (cached
# between runs).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v ss >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v g++ >/dev/null || need+=(g++ make)
command -v npm >/dev/null || need+=(nodejs npm)
# tests/test_deploy.py: the shipped nginx.conf runs for real; compose is validated by docker-compose.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx-light)
command -v docker-compose >/dev/null || need+=(docker-compose)
# tests/test_deploy.py: the compose file's Prometheus command and deploy/prometheus.yml scrape for real.
command -v prometheus >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# The Node SSE clients of the interoperability suite, pinned by tests/interop/package-lock.json;
# kept between runs unless the lock file changed.
# (eventsource 5 asks for Node >= 22.12 in its engines; it runs on Debian's Node 20: tested here.)
stamp=tests/interop/node_modules/.installed-from
if [ "$(sha256sum tests/interop/package-lock.json)" != "$(cat "$stamp" 2>/dev/null)" ]; then
  (cd tests/interop && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
  sha256sum tests/interop/package-lock.json > "$stamp"
fi

# The openai npm SDK for tests/test_openai_node.py: installed from its lockfile once, again only when
# the lockfile changes; --prefer-offline takes it from npm's cache when it is there.
node_sdk=tests/openai_node
if ! cmp -s "$node_sdk/package-lock.json" "$node_sdk/node_modules/.installed-lock.json"; then
  (cd "$node_sdk" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error \
    && cp package-lock.json node_modules/.installed-lock.json)
fi

# The Responses API's Node callers for tests/test_responses_clients.py, each from its lockfile, again
# only when it changes: the Vercel AI SDK (ai + @ai-sdk/openai; ai 7 says Node >= 22 in its engines
# and runs on Debian's Node 20: tested here) and Codex CLI (its npm package brings the native
# binary for this platform as an optional dependency).
for clients in tests/ai_sdk tests/codex_cli; do
  if ! cmp -s "$clients/package-lock.json" "$clients/node_modules/.installed-lock.json"; then
    (cd "$clients" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error \
      && cp package-lock.json node_modules/.installed-lock.json)
  fi
done

# flowise-lite-sio, the benchmark's socket.io upstream (tests/test_bench_lite_sio.py runs it):
# `bench/servers.py lite-sio` installs it too, but tests should not reach npm mid-run.
lite_sio=bench/flowise_lite_sio
if ! cmp -s "$lite_sio/package-lock.json" "$lite_sio/node_modules/.installed-lock.json"; then
  (cd "$lite_sio" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error \
    && cp package-lock.json node_modules/.installed-lock.json)
fi

bash tests/e2e/install_flowise.sh
