#!/usr/bin/env bash
# Regenerates requirements.lock from pyproject.toml's runtime dependencies (no extras): every
# package the gateway needs, pinned, with the hashes of its published files. The Dockerfile installs
# from it with `pip install --require-hashes`, so an image gets the versions the tests passed on.
# Rerun it after any change to pyproject.toml's dependencies; tests/test_packaging.py fails while
# the lock and pyproject disagree.
#
#   bash deploy/lock.sh
#
# One lock for every platform and every Python from 3.11 (`uv pip compile --universal`): the image
# runs 3.12, deploy/check-image.sh's stand-in base 3.11. uv is installed, at a fixed version, in a
# virtual environment of its own (LOCK_TOOLS), not in the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.9
tools=${LOCK_TOOLS:-${TMPDIR:-/tmp}/flowise-sse-lock-tools}
if [ "$("$tools/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$uv_version" ]; then
  "${PYTHON:-python3}" -m venv "$tools"
  "$tools/bin/pip" install --quiet "uv==$uv_version"
fi
# --system-certs: the system's certificate store, as pip uses it (a network may add its own CA);
# --no-config: no uv.toml of the machine or the user changes the lock.
"$tools/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
  --system-certs --no-config --no-progress --custom-compile-command "bash deploy/lock.sh" --output-file requirements.lock
