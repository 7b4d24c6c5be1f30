"""The exit codes of every queue-rescue command, in one place (README: Exit codes)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # every selected message was rerouted, or nothing was selected
    PARTIAL = 1  # some selected messages were not rerouted (they are back in Postfix)
    USAGE = 2  # bad command line or configuration file; nothing was changed
    LOCKED = 3  # another queue-rescue holds the lock; nothing was changed
    POSTFIX = 4  # Postfix could not be reached or its commands failed
    INTERRUPTED = 130  # stopped by SIGINT/SIGTERM; held messages were released
    SOFTWARE = 70  # an unexpected error (a bug); held messages were released
    CLOSED_OUTPUT = 141  # the output's reader went away (`| head`): stopped, as by SIGPIPE
