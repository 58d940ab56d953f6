"""Log format of every streamscore process: text (the default) or one JSON object per line.

``STREAMSCORE_LOG_FORMAT=json`` is for log collectors (Loki, Elasticsearch, Cloud Logging): each line is an object
with ``time``, ``level``, ``logger``, ``pid`` and ``message``, plus any ``extra=`` fields of the call. Faust (mode)
configures logging itself when its worker starts, so the worker hands it ``logging_config(...)`` (mode's
``logging_config`` argument, a ``logging.config.dictConfig`` dict); the archiver child, which is not a Faust
worker, calls ``configure_logging`` with the same setting, and writes to the same stdout. Both formatters are
python-json-logger's, the well-kept library for this.

Repeated trouble is summarised, not dumped (``Summariser``): every process's handlers let through one line per kind
(logger and message template; librdkafka's: its facility) and ``STREAMSCORE_LOG_REPEAT_INTERVAL_S``; the next line
of that kind says how many were left out. A 50 s broker outage logged 3,798-4,203 lines (0.75-0.82 MB) per worker
before, 85 % of them aiokafka's (Faust's client) reconnect errors.

>>> import io, json, logging
>>> stream = io.StringIO()
>>> handler = logging.StreamHandler(stream)
>>> handler.setFormatter(json_formatter())
>>> logger = logging.getLogger("streamscore.doctest")
>>> logger.addHandler(handler)
>>> logger.warning("lane %s stalled", "drift", extra={"partition": 3})
>>> line = json.loads(stream.getvalue())
>>> line["level"], line["logger"], line["message"], line["partition"], isinstance(line["pid"], int)
('WARNING', 'streamscore.doctest', 'lane drift stalled', 3, True)
>>> logger.removeHandler(handler)
"""

from __future__ import annotations

import collections
import logging
import logging.config
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

# mode's own text format plus the logger name (mode's carries the service name in the message instead)
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message")
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}


def json_formatter() -> JsonFormatter:
    """One JSON object per record, times in ISO 8601 with the UTC offset (``2025-01-01T12:00:00+0000``)."""
    return JsonFormatter(list(JSON_FIELDS), rename_fields=JSON_RENAMES, datefmt="%Y-%m-%dT%H:%M:%S%z",
                         reserved_attrs=[*RESERVED_ATTRS, "summary_kind"])  # Summariser's, not the reader's


def logging_config(log_format: LogFormat, level: str | int = "INFO") -> dict[str, Any] | None:
    """The ``logging_config`` to give Faust's worker: None keeps Faust's text lines (coloured on a terminal)."""
    if log_format == "text":
        return None
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,  # the modules' loggers exist before Faust configures logging
        "formatters": {"json": {"()": json_formatter}},
        # sys.stdout as it is now: Faust later redirects print() into the log, not the handler's stream
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout",
                                 "level": level_name}},
        "root": {"level": level_name, "handlers": ["default"]},
    }


def configure_logging(log_format: LogFormat, level: str | int = "INFO", repeat_interval_s: float | None = None) -> None:
    """Set up logging in a process that is not a Faust worker (the archiver child) in the worker's format, with
    repeated lines summarised (``Summariser``)."""
    config = logging_config(log_format, level)
    if config is None:
        logging.basicConfig(level=level, format=TEXT_FORMAT, force=True)
    else:
        logging.config.dictConfig(config)
    summarise_root(repeat_interval_s)


# Loggers of this project: their lines below WARNING (progress, start-up) are never summarised.
OWN_LOGGERS = ("streams", "datastore", "models", "online_learning", "schemas", "__main__")


def source_of(logger_name: str) -> str:
    """What a count of left-out lines is reported by: a library's top-level name, or ``streamscore``.

    >>> source_of("aiokafka.consumer.fetcher"), source_of("librdkafka"), source_of("streams.worker.lag")
    ('aiokafka', 'librdkafka', 'streamscore')
    """
    top = logger_name.split(".", 1)[0]
    return "streamscore" if top in OWN_LOGGERS else top


# ``extra={"summary_kind": RATE_LIMITED}``: a line its caller already logs once per interval (the start-up wait)
RATE_LIMITED = "rate-limited by its caller"


class Summariser(logging.Filter):
    """Lets through the first line of each kind per ``interval_s`` and counts the others; the next line of that kind
    that gets through ends in "(and N more like it in 60 s)". Records with a traceback always get through, and so
    do this project's lines below WARNING.

    One instance can sit on a logger and on handlers: each record is decided once (it is remembered weakly).

    >>> now = [0.0]
    >>> summary = Summariser(interval_s=60, clock=lambda: now[0])
    >>> def line(msg, *args, name="aiokafka", level=logging.ERROR):
    ...     record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    ...     return record.getMessage() if summary.filter(record) else None
    >>> [line("Unable connect to node with id %s", 1) for _ in range(3)]
    ['Unable connect to node with id 1', None, None]
    >>> line("scored %d events", 10, name="streams.engines.batch", level=logging.INFO)  # progress of ours: never
    'scored 10 events'
    >>> summary.take_suppressed()
    Counter({'aiokafka': 2})
    >>> now[0] = 61.0
    >>> line("Unable connect to node with id %s", 1)
    'Unable connect to node with id 1 (and 2 more like it in 61 s)'
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[object, ...], tuple[float, int]] = {}  # kind -> (last let through, left out since)
        self._suppressed: collections.Counter[str] = collections.Counter()  # by source, since take_suppressed()
        self._decided: weakref.WeakKeyDictionary[logging.LogRecord, bool] = weakref.WeakKeyDictionary()

    @staticmethod
    def kind(record: logging.LogRecord) -> tuple[object, ...] | None:
        """What makes two lines "alike" (None: never summarised)."""
        if record.exc_info or (source_of(record.name) == "streamscore" and record.levelno < logging.WARNING):
            return None
        explicit = getattr(record, "summary_kind", None)  # a caller's own notion of alike (``extra=``)
        if explicit == RATE_LIMITED:
            return None
        if explicit is not None:
            return (record.name, explicit)
        if record.name == "librdkafka" and isinstance(record.args, tuple) and record.args:
            return (record.name, record.args[0])  # "%s [%s] %s" % (facility, client, text): alike by facility
        return (record.name, record.levelno, str(record.msg))

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind(record)
        if kind is None:
            return True
        with self._lock:
            decided = self._decided.get(record)
            if decided is not None:
                return decided
            now = self.clock()
            last, left_out = self._kinds.get(kind, (float("-inf"), 0))
            passes = now - last >= self.interval_s
            if passes:
                self._kinds[kind] = (now, 0)
                if left_out:
                    record.msg = f"{record.msg} (and {left_out} more like it in {now - last:.0f} s)"
            else:
                self._kinds[kind] = (last, left_out + 1)
                self._suppressed[source_of(record.name)] += 1
            self._decided[record] = passes
            return passes

    def take_suppressed(self) -> collections.Counter[str]:
        """Lines left out since the last call, by source (their kinds still report them on their next line)."""
        with self._lock:
            taken, self._suppressed = self._suppressed, collections.Counter()
            return taken


SUMMARY = Summariser()  # the process's one summariser: its counts are what an outage's "broker back" line reports


def summarise_root(interval_s: float | None = None) -> Summariser:
    """Put ``SUMMARY`` on every handler of the root logger (again after Faust replaces them)."""
    if interval_s is not None:
        SUMMARY.interval_s = interval_s
    for handler in logging.root.handlers:
        if SUMMARY not in handler.filters:
            handler.addFilter(SUMMARY)
    return SUMMARY
