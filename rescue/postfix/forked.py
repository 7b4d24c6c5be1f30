"""A forked helper process that writes its answer into a pipe this process reads.

Only `os` is needed here: a scan forks its helpers before anything heavier is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO


class PipedChild:
    """Fork `child(write_fd)` (it writes its answer, then leaves with os._exit); read the
    answer from `_pipe`, then close()."""

    def __init__(self, child: Callable[[int], None]) -> None:
        read_fd, write_fd = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # the helper: never returns
            code = 1
            try:
                os.close(read_fd)
                child(write_fd)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pipe: IO[bytes] | None = os.fdopen(read_fd, "rb")

    def close(self) -> int:
        """Wait for the helper (closing the pipe first ends it if it still writes)."""
        if self._pipe is None:
            return 0
        self._pipe.close()
        self._pipe = None
        _, status = os.waitpid(self._pid, 0)
        return status
