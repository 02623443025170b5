#!/usr/bin/env python3
"""`python3 stack/stack.py ...`: the stack package's command line (see stack/cli.py)."""

import sys
from pathlib import Path

# Run as a script, the first import path is this folder, where `stack` would be this file.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from stack.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
