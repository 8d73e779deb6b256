"""Logging of long-running Velvet processes: repeated warnings collapsed, a log file of bounded size.

`RepeatLimiter` wraps a handler. A WARNING-or-worse record from the same place with the same message
template and exception type as one written less than `interval` seconds ago is counted, not written;
once the interval is over, one line says "(repeated N more times in Xs)" (a timer thread writes it
if nothing else is logged). So an error that repeats a thousand times a second costs two lines per
interval.

`LogFile` is the stdlib RotatingFileHandler that also points the process's stdout and stderr at the
current file, so a crash traceback (or a faulthandler dump) lands in the same bounded set of files:
at most (backups + 1) x max_bytes, plus that last traceback.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 2
REPEAT_INTERVAL_SECONDS = 10.0
_MAX_KEYS = 1024
"""Distinct repeating records remembered at once (the oldest is summarised and forgotten beyond)."""

_Key = tuple[str, int, str, int, str, str]


def _key(record: logging.LogRecord) -> _Key:
    """What makes two records "the same error": logger, level, code line, template, exception type."""
    exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
    return (record.name, record.levelno, record.pathname, record.lineno, str(record.msg), exc_type)


@dataclass
class _Window:
    """One key's interval: when it began (clock and record time), and what it held back since."""

    start: float
    first: logging.LogRecord
    held: int = 0
    last_message: str = ""
    last_created: float = 0.0


class RepeatLimiter(logging.Handler):
    """Passes records to `target`, holding back repeats of a WARNING-or-worse record for `interval` s."""

    def __init__(self, target: logging.Handler, interval: float = REPEAT_INTERVAL_SECONDS,
                 level: int = logging.WARNING, clock: Callable[[], float] = time.monotonic) -> None:
        """Records below `level` always pass (progress messages are not errors)."""
        super().__init__()
        self.target = target
        self.interval = interval
        self.limit_level = level
        self._clock = clock
        self._windows: OrderedDict[_Key, _Window] = OrderedDict()
        self._timer: threading.Timer | None = None
        self._closed = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write `record` unless it repeats one written less than `interval` seconds ago."""
        now = self._clock()
        self._close_windows(lambda w: now - w.start >= self.interval)
        if record.levelno >= self.limit_level:
            key = _key(record)
            window = self._windows.get(key)
            if window is not None:
                window.held += 1
                window.last_message, window.last_created = record.getMessage(), record.created
                self._arm(window.start + self.interval - now)
                return
            self._windows[key] = _Window(now, record)
            if len(self._windows) > _MAX_KEYS:
                self._summarise(self._windows.popitem(last=False)[1])
        self.target.handle(record)

    def flush(self) -> None:
        """Summarise every finished interval, then flush the target."""
        now = self._clock()
        self.acquire()
        try:
            self._close_windows(lambda w: now - w.start >= self.interval)
        finally:
            self.release()
        self.target.flush()

    def close(self) -> None:
        """Summarise every interval, finished or not, and close the target."""
        self.acquire()
        try:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._close_windows(lambda _: True)
        finally:
            self.release()
        self.target.close()
        super().close()

    def _arm(self, delay: float) -> None:
        """Have the timer summarise finished intervals in `delay` seconds (one timer at a time)."""
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(max(delay, 0.0), self._tick)
            self._timer.daemon = True
            self._timer.start()

    def _tick(self) -> None:
        """The timer: summarise what finished, and come back for intervals still holding records."""
        self.acquire()
        try:
            self._timer = None
            now = self._clock()
            self._close_windows(lambda w: now - w.start >= self.interval)
            holding = [w.start for w in self._windows.values() if w.held]
            if holding:
                self._arm(min(holding) + self.interval - now)
        finally:
            self.release()

    def _close_windows(self, over: Callable[[_Window], bool]) -> None:
        """Summarise and forget the windows `over` says are done (they are in order of start)."""
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if not over(window):
                return
            del self._windows[key]
            self._summarise(window)

    def _summarise(self, window: _Window) -> None:
        """One line for the records a window held back: the last of them, with the count."""
        if not window.held:
            return
        summary = logging.makeLogRecord(window.first.__dict__)
        seconds = window.last_created - window.first.created
        summary.msg = f"{window.last_message} (repeated {window.held} more times in {seconds:.0f}s)"
        summary.created = window.last_created
        summary.msecs = (window.last_created % 1) * 1000
        summary.args = None
        summary.exc_info = summary.exc_text = summary.stack_info = None
        self.target.handle(summary)


class LogFile(RotatingFileHandler):
    """A rotating log file that also receives the process's stdout and stderr (crash tracebacks)."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        """Append to `path` (made if missing), rolled over to path.1 .. path.<backups> at `max_bytes`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._take_std_streams()

    def doRollover(self) -> None:
        """Roll over, then point stdout and stderr at the new file."""
        super().doRollover()
        self._take_std_streams()

    def _take_std_streams(self) -> None:
        if self.stream is None:
            return
        for std in (sys.stdout, sys.stderr):
            std.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


def rotate_if_full(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
    """Roll `path` over the way LogFile does when it holds `max_bytes` or more (before a writer starts)."""
    try:
        if path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, delay=True)
    handler.doRollover()  # with delay, nothing is reopened
    handler.close()


def setup_logging(log_file: Path | None = None, max_bytes: int = LOG_MAX_BYTES,
                  backups: int = LOG_BACKUPS, level: int = logging.INFO) -> None:
    """Log to `log_file` (bounded, with stdout and stderr) or to stderr, repeats collapsed.

    Python warnings go to the log, and a fatal signal (a crash in a ctypes call) dumps every
    thread's stack to stderr, which is the log file when there is one.
    """
    target: logging.Handler = LogFile(log_file, max_bytes, backups) if log_file else logging.StreamHandler()
    target.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(RepeatLimiter(target))
    root.setLevel(level)
    logging.captureWarnings(True)
    faulthandler.enable()
