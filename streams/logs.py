"""Log format of every streamscore process: text (the default) or one JSON object per line.

``STREAMSCORE_LOG_FORMAT=json`` is for log collectors (Loki, Elasticsearch, Cloud Logging): each line is an object
with ``time``, ``level``, ``logger``, ``pid`` and ``message``, plus any ``extra=`` fields of the call. Faust (mode)
configures logging itself when its worker starts, so the worker hands it ``logging_config(...)`` (mode's
``logging_config`` argument, a ``logging.config.dictConfig`` dict); the archiver child, which is not a Faust
worker, calls ``configure_logging`` with the same setting, and writes to the same stdout. Both formatters are
python-json-logger's, the well-kept library for this.

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

import logging
import logging.config
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

# mode's own text format plus the logger name (mode's carries the service name in the message instead)
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message")
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}


def json_formatter() -> JsonFormatter:
    """One JSON object per record, times in ISO 8601 with the UTC offset (``2025-01-01T12:00:00+0000``)."""
    return JsonFormatter(list(JSON_FIELDS), rename_fields=JSON_RENAMES, datefmt="%Y-%m-%dT%H:%M:%S%z")


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


def configure_logging(log_format: LogFormat, level: str | int = "INFO") -> None:
    """Set up logging in a process that is not a Faust worker (the archiver child) in the worker's format."""
    config = logging_config(log_format, level)
    if config is None:
        logging.basicConfig(level=level, format=TEXT_FORMAT, force=True)
    else:
        logging.config.dictConfig(config)
