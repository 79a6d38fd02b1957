"""`python -m batchexec` is the `batchexec` console script (how the emulator runs workers)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
