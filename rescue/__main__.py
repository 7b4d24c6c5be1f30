"""`python -m rescue` runs the queue-rescue command line."""

from rescue.start import main

main()
