"""Log formatting: LOG_FORMAT=json writes one JSON object per line for log collectors."""

import json
import logging
from datetime import UTC, datetime


def about_jobs(job_ids: list[str], request_ids: list[str] = ()) -> tuple[str, dict]:
    """The end of a line about a batch of jobs and its `extra`: the ids in the text, so
    that grep finds the line by any job's (or upload's request) id, and as JSON fields."""
    text = "jobs " + " ".join(job_ids)
    extra: dict = {"job_ids": job_ids}
    if known := [request_id for request_id in request_ids if request_id]:
        text += " requests " + " ".join(dict.fromkeys(known))
        extra["request_ids"] = list(dict.fromkeys(known))
    return text, extra


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the request id (common/request_ids.py) and the job
    id when the log call passed `extra={"job_id": ...}` (`job_ids` and `request_ids` for a
    line about a batch, common.logs.about_jobs), so every line about a request or a job can
    be found by its id."""

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
        for many in ("job_ids", "request_ids"):
            if ids := getattr(record, many, None):
                entry[many] = [str(one) for one in ids]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
