#!/usr/bin/env python3
"""The benchmark's entry point: ``tools/bench.py --help``; the code is in ``tools/benchlib/``.

    .venv/bin/python tools/bench.py                  # full run: --repeat 3
    .venv/bin/python tools/bench.py --smoke          # CI: 1 repeat, small sizes, < 1 min
    .venv/bin/python tools/bench.py --only flood,open --repeat 3

See ``tools/benchlib/__init__.py`` for what it measures and docs/performance.md for how
to read it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
