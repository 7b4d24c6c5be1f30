"""`python -m rescue` runs the queue-rescue command line."""

from rescue.cli import main

main()
