"""The console a person reads: medsweep's own lines; everything else in `<experiment>/driver.log`.

    console = Console()
    console.capture("runs/x/driver.log")   # from here on fds 1 and 2 write to the log
    log.info("...")                         # medsweep's lines: the console and the log
    console.error("error: ...")             # the console and the log
    console.release()                       # fds 1 and 2 back to the terminal

A search's console used to be hundreds of lines: Ray Tune's boxed tables, W&B's lines for
every run, Ray workers' output, Ray's own warnings, with medsweep's progress lines lost among
them. `capture` points the process's stdout and stderr (file descriptors 1 and 2, so Ray's
C++ core, its log-forwarding thread and every `print` follow) at the log, and gives the
`medsweep` logger a handler on the terminal kept aside: the console shows the plan, the
progress, one line per trial that ends, and the summary; the log holds all of it and what the
console used to show. `--verbose` skips the capture. An internal error's traceback reaches the
terminal (`release` first).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("medsweep")
LOG_FILE = "driver.log"


class Console:
    """See the module docstring; `path` is the log once `capture` ran (None before)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._saved: tuple[int, int] | None = None
        self._terminal = None
        self._handler: logging.Handler | None = None

    def capture(self, path: str) -> None:
        """Send fds 1 and 2 to `path` (appended); medsweep's lines still reach the terminal."""
        if self._saved is not None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._saved = (os.dup(1), os.dup(2))
        self._terminal = os.fdopen(os.dup(self._saved[1]), "w", buffering=1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._handler = logging.StreamHandler(self._terminal)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler.setLevel(logging.INFO)
        log.addHandler(self._handler)
        self.path = path

    def error(self, line: str) -> None:
        """`line` on the terminal (and in the log while capturing)."""
        if self._terminal is not None:
            self._terminal.write(line)
            self._terminal.flush()
        sys.stderr.write(line)
        sys.stderr.flush()

    def release(self) -> None:
        """The terminal back on fds 1 and 2 (idempotent)."""
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        log.removeHandler(self._handler)
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._terminal.close()
        self._saved, self._terminal, self._handler = None, None, None
