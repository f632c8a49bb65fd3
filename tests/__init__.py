"""The test suite. Imported first, before any conftest, by pytest and by every xdist worker."""

import os
import sys

# Where PYTHONDONTWRITEBYTECODE is set (some images set it), every process the suite starts would
# compile the gateway again, and every worker would have pytest rewrite the asserts of every test
# module again, each run: a worker's start-up (collection) takes 8.7 s without that cache, 4.5 s
# with it. The bytecode goes beside the project's own sources (`__pycache__/`, ignored by git).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the gateway and CLI processes the tests start
