"""Launch N gossipd daemons on loopback, poll them, write history and plots (see gossipd/tools/swarm_cli.py)."""

import sys

from gossipd.tools.swarm_cli import main

if __name__ == "__main__":
    sys.exit(main())
