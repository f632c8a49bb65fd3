import sys

from .cli import main

if __name__ == "__main__":  # not when a `serve --workers` process is spawned from this module
    sys.exit(main())
