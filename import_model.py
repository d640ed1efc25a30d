"""Import a model file into the BentoML model store: `python import_model.py --help` (imgserve/importing/cli.py)."""

import sys

from imgserve.importing.cli import main

if __name__ == "__main__":
    sys.exit(main())
