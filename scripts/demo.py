"""`make demo`: four daemons on 127.0.0.1 train the embedded MNIST task together for a minute and a half.

Peer 0 is the bootstrap; the others find it, then each other through the DHT and the task's pubsub
topic, copy a model, and mix with PowerGossip. Progress every few seconds, then a per-peer table; every
process started is stopped. History and plots land in out/demo/.
"""

import sys

from gossipd.tools.swarm_cli import main

if __name__ == "__main__":
    sys.exit(main(["--peers", "4", "--duration", "90", "--interval", "5", "--out", "out/demo", *sys.argv[1:]]))
