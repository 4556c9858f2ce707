"""JSON logs; every line carries the decision id of the request in flight."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

decision_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "decision_id", default=None
)


def _stamp_decision_id() -> None:
    """Attach the request's decision id to every log record when it is created.

    Handlers may format a record later or on another thread, where the
    context variable no longer holds the request's id.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_stamps_decision_id", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        record.decision_id = decision_id_var.get()
        return record

    factory._stamps_decision_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_stamp_decision_id()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        decision_id = getattr(record, "decision_id", None)
        if decision_id:
            out["decision_id"] = decision_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our decision records
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
