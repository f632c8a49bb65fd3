#!/usr/bin/env bash
# Builds the Dockerfile for real and runs the image, on a machine with neither a Docker engine nor
# access to Docker Hub: Debian's buildah builds it, and the `python:3.12-slim` base is stood in for by
# a Debian bookworm root filesystem made with debootstrap (Python 3.11, pip, no "externally managed"
# marker: what the official image offers the Dockerfile). Then, in the built image: it runs as a
# non-root user, keeps its HEALTHCHECK, `serve --demo` answers a stream on port 8080, the
# HEALTHCHECK's own command passes, and SIGTERM stops it.
#
#   sudo bash deploy/check-image.sh          # about 8 minutes; WORK=/path to keep the root filesystem
#
# What it does not check: the official python:3.12-slim itself (Python 3.12), or `docker compose up`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/flowise-sse-image-check}
store=(--storage-driver vfs)
mkdir -p "$work"

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The base: this machine's own Debian mirror (from its apt sources), bookworm, minimal.
rootfs="$work/rootfs"
if [ ! -x "$rootfs/usr/bin/python3" ]; then
  mirror=$(grep -hoP '^URIs:\s*\K\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
  [ -n "$mirror" ] || mirror=$(grep -hoP '^deb\s+\K(http\S+)' /etc/apt/sources.list | head -1)
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,passwd bookworm "$rootfs" "$mirror"
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  ln -sf python3 "$rootfs/usr/bin/python"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # this network's CAs
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
fi
base=$(buildah "${store[@]}" from scratch)
mnt=$(buildah "${store[@]}" mount "$base")
cp -a "$rootfs/." "$mnt/"
buildah "${store[@]}" umount "$base"
buildah "${store[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 "$base"
buildah "${store[@]}" commit -q "$base" docker.io/library/python:3.12-slim >/dev/null
buildah "${store[@]}" rm "$base" >/dev/null

# The Dockerfile as shipped (docker format: OCI images drop HEALTHCHECK).
buildah "${store[@]}" bud --format docker --isolation chroot --network host --pull-never -t flowise-sse:check .

user=$(buildah "${store[@]}" inspect --format '{{.Docker.Config.User}}' flowise-sse:check)
health=$(buildah "${store[@]}" inspect --format '{{.Docker.Config.Healthcheck}}' flowise-sse:check)
echo "image user: $user; healthcheck: $health"
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ]
[[ "$health" == *"/healthz"* ]]

if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
  echo "port 8080 is taken: the image's HEALTHCHECK probes 8080, so the check needs it free" >&2
  exit 1
fi
ctr=$(buildah "${store[@]}" from -q flowise-sse:check)
cleanup() { [ -n "${server:-}" ] && kill "$server" 2>/dev/null; buildah "${store[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
buildah "${store[@]}" run --isolation chroot --network host "$ctr" -- flowise-sse --version
buildah "${store[@]}" run --isolation chroot --network host "$ctr" -- \
  flowise-sse serve --demo --flowise-version 2.0.7 --host 127.0.0.1 --port 8080 >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 200); do curl -fs http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done
# The HEALTHCHECK's own command (the Dockerfile's exec form), run in the image.
mapfile -t probe < <(python3 -c '
import json, re, sys
text = open("Dockerfile").read().replace("\\\n", " ")
print("\n".join(json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M)[1])))')
buildah "${store[@]}" run --isolation chroot --network host "$ctr" -- "${probe[@]}"
echo "healthcheck: passed"
curl -fsN "http://127.0.0.1:8080/v1/chatflows/3c9866f3-f7de-4cf0-bcca-26807ac532c4/stream?question=image" \
  | grep -q '^event: end$'
echo "a demo stream: ended with end"
pid=$(ss -ltnp | grep ':8080 ' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ "$(ps -o user= -p "$pid")" != root ]
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null
echo "SIGTERM: the gateway stopped ($(grep -c 'Finished server process' "$work/serve.log") clean finish)"
server=""
echo "image check passed"
