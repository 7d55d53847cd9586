"""A run's log: timestamped lines (ISO 8601, local time with its offset) in its log file and, one line
each, on the console, through the standard logging module."""
import itertools
import logging
import sys
from datetime import datetime

FORMAT = "%(asctime)s %(message)s"
_loggers = itertools.count()


class TimestampedFormatter(logging.Formatter):
    """`FORMAT` with asctime as an ISO 8601 local time with offset, e.g. 2026-12-01T09:30:00+01:00."""

    def formatTime(self, record, datefmt=None):
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")


def run_logger(path):
    """A logger appending to file `path` and writing to stdout; a record logged with extra={"console":
    False} goes to the file only. Its own logger (no propagation): two runs in a process never mix."""
    logger = logging.getLogger(f"filtergraft.run.{next(_loggers)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = TimestampedFormatter(FORMAT)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_console = logging.StreamHandler(sys.stdout)
    to_console.addFilter(lambda record: getattr(record, "console", True))
    for handler in (to_file, to_console):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def label_console(logger, label):
    """Begin `logger`'s console lines (not its file's) with `label`, e.g. the network's index in a pack,
    whose networks share one console."""
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setFormatter(TimestampedFormatter(f"%(asctime)s {label}%(message)s"))


def close_logger(logger):
    """Flush and close every handler of `logger`, and detach them."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
