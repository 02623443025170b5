"""Log formatting: LOG_FORMAT=json writes one JSON object per line for log collectors."""

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the request id (common/request_ids.py) and the job
    id when the log call passed `extra={"job_id": ...}`, so every line about a request or a
    job can be found by its id."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = str(job_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
