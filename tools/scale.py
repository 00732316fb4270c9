#!/usr/bin/env python3
"""The verified-connection scale client: ``tools/scale.py --help``; the code is in
``tools/scalelib/``.

    .venv/bin/python tools/scale.py --port 9000 --conns 10000 --pid "$(pgrep -of line-echo)"
    .venv/bin/python tools/scale.py --port 9000 --conns 1000000 --hold 30 --pid PID

See ``tools/scalelib/__init__.py`` for what it verifies and tools/README.md for the JSON.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        # A client process: only scalelib.client is imported (no reactor, no argparse), so
        # seventy of them start quickly.
        from scalelib.client import child_main

        sys.exit(child_main(json.loads(sys.argv[2])))
    from scalelib.cli import main

    sys.exit(main())
