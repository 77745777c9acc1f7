"""`python -m gossipd` is the `gossipd` command."""

from gossipd.cli import main

main()
