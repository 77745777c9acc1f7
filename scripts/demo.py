"""`make demo`: a small swarm on the embedded default task, with progress, then a per-peer table.

Until the daemon lands this runs the swarm in one process (the simulator, which uses the same mixing code
and wire codec the daemon will); see README.md.
"""

from __future__ import annotations

import sys

from gossipd.cli import main

if __name__ == "__main__":
    sys.argv = ["gossipd", "simulate", "--peers", "4", "--steps", "150", "--eval-every", "25"]
    main()
