"""Classify a folder through a running server: `python client.py --help` (imgserve/client/cli.py)."""

import sys

from imgserve.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
