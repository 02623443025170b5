"""What clients send besides their files: the query strings of the API and the pages,
checked strictly (an unknown parameter is named, not ignored), and an upload's form
fields. The answers are described and built in predictions/serializers.py."""

from rest_framework import serializers

from common.limits import PAGE_SIZE_MAX, TOP_K_DEFAULT, TOP_K_MAX, TOP_K_MIN, WAIT_MAX_SECONDS
from predictions import selectors
from predictions.models import Batch, Job

JOB_ORDERINGS = ["created_at", "finished_at", "original_name", "status"]


class StrictQuerySerializer(serializers.Serializer):
    """A query string in which any parameter but these fields is refused: a misspelt
    filter must not silently answer with every job."""

    # DRF's own: ?format=json picks the renderer.
    format = serializers.CharField(required=False)

    @classmethod
    def from_query(cls, query, **kwargs) -> "StrictQuerySerializer":
        """From request.GET: a repeated parameter joins its values with commas, and an
        empty one (a form's empty field) counts as not given."""
        data = {key: ",".join(v for v in query.getlist(key) if v) for key in query}
        known = cls._declared_fields
        return cls(data={k: v for k, v in data.items() if v or k not in known}, **kwargs)

    def to_internal_value(self, data):
        if unknown := sorted(set(data) - set(self.fields)):
            known = f"unknown query parameter; known: {', '.join(self.fields)}"
            raise serializers.ValidationError({name: [known] for name in unknown})
        return super().to_internal_value(data)


class JobListQuerySerializer(StrictQuerySerializer):
    """The query of a job list (the API's and the My jobs page's)."""

    def validate_batch(self, value: str) -> str:
        if selectors.with_id(Batch.objects.none(), value) is None:
            raise serializers.ValidationError(
                "must be a batch id or its first 8 or more hex digits"
            )
        return value

    status = serializers.CharField(
        required=False,
        help_text="one or more statuses, comma-separated or repeated: the jobs in any of them",
    )
    batch = serializers.CharField(
        required=False,
        max_length=36,
        help_text="a batch id, or its first 8 or more hex digits (the short id pages show)",
    )
    label = serializers.CharField(
        required=False, max_length=255, help_text="text in the top-1 label, any case"
    )
    name = serializers.CharField(
        required=False, max_length=255, help_text="text in the uploaded file's name, any case"
    )
    mine = serializers.BooleanField(
        required=False, default=False, help_text="only your own jobs (staff otherwise see all)"
    )
    owner = serializers.CharField(
        required=False, max_length=150, help_text="staff only: the jobs of this username"
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    ordering = serializers.ChoiceField(
        choices=[f"{sign}{field}" for field in JOB_ORDERINGS for sign in ("", "-")],
        required=False,
        default="-created_at",
    )
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(min_value=1, max_value=PAGE_SIZE_MAX, required=False)

    def validate_status(self, value: str) -> list[str]:
        statuses = [part.strip() for part in value.split(",") if part.strip()]
        wrong = [status for status in statuses if status not in Job.Status.values]
        if wrong or not statuses:
            raise serializers.ValidationError(
                f"{', '.join(wrong) or 'nothing'} is not a status; "
                f"use one or more of {', '.join(Job.Status.values)}"
            )
        return statuses

    def validate_owner(self, value: str) -> str:
        request = self.context.get("request")
        if request is None or not selectors.may_see_every_job(request.user):
            raise serializers.ValidationError(
                "only staff with the permission to view jobs may list other users' jobs"
            )
        return value


class JobCreateSerializer(serializers.Serializer):
    """Form fields of an upload; the images themselves are read from request.FILES."""

    top_k = serializers.IntegerField(
        min_value=TOP_K_MIN, max_value=TOP_K_MAX, default=TOP_K_DEFAULT
    )
    batch = serializers.UUIDField(required=False)
    seq = serializers.IntegerField(min_value=0, required=False)
    model = serializers.CharField(
        max_length=63, required=False, help_text="a registered model (default: the default one)"
    )
    model_version = serializers.IntegerField(
        min_value=1, required=False, help_text="default: the model's latest enabled version"
    )
    # Checked by the upload (predictions/uploads.py), which every way in goes through.
    callback_url = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        help_text="POSTed each job once it has finished (docs/webhooks.md)",
    )
    # Checked by uploads.parse_deadline, the one check for every way of uploading.
    deadline = serializers.CharField(
        max_length=64,
        required=False,
        help_text="ISO 8601 time with a time zone after which the answer is of no use: the "
        "job is not inferred but ends `expired`. Not with timeout_s",
    )
    timeout_s = serializers.IntegerField(
        required=False,
        help_text="seconds from the upload after which the job ends `expired` if not inferred "
        "(default: the model version's default_timeout_s, if any)",
    )
    # Checked by uploads.check_priority, as the seed API's.
    priority = serializers.CharField(
        max_length=16,
        required=False,
        help_text="the jobs' lane: high, normal or low (default: the batch's, else normal); "
        "workers take higher lanes first, keeping a share for the lower (docs/scheduling.md)",
    )

    # The multipart part that carries the files; request.FILES has them, request.data too.
    FILES_FIELD = "image"

    def to_internal_value(self, data):
        # A misspelt field (the seed API's `topk`) must not silently give the default.
        if unknown := sorted(set(data) - set(self.fields) - {self.FILES_FIELD}):
            known = ", ".join([self.FILES_FIELD, *self.fields])
            message = f"unknown field; an upload takes: {known}"
            raise serializers.ValidationError({name: [message] for name in unknown})
        return super().to_internal_value(data)


class JobDetailQuerySerializer(StrictQuerySerializer):
    wait = serializers.IntegerField(
        min_value=0,
        max_value=WAIT_MAX_SECONDS,
        default=0,
        help_text="hold the answer up to this many seconds until the job has finished",
    )


class BatchExportQuerySerializer(StrictQuerySerializer):
    format = serializers.ChoiceField(choices=["csv", "json"], default="csv")


# The last epoch millisecond a datetime (and MariaDB's DATETIME) can hold, 9999-12-31:
# a later "since" is no time at all, and overflowed the stream's datetime.
EPOCH_MS_MAX = 253_402_300_799_999


class BatchEventsQuerySerializer(StrictQuerySerializer):
    jobs = serializers.BooleanField(
        default=True, help_text="false: only the counts, no event per job"
    )
    since = serializers.IntegerField(
        min_value=0,
        max_value=EPOCH_MS_MAX,
        required=False,
        help_text="epoch milliseconds: jobs that changed before this are left out",
    )


def batch_events_query(query, last_event_id: str | None) -> dict:
    """The checked query of a batch's event stream, {"jobs": bool, "since": epoch ms}: the
    Last-Event-ID header (the id of the last event an EventSource got) wins over ?since=.
    Raises ValidationError (400) for either one out of range or not a plain number; "²"
    passes str.isdigit() but not int()."""
    params = BatchEventsQuerySerializer.from_query(query)
    params.is_valid(raise_exception=True)
    checked = {"jobs": params.validated_data["jobs"]}
    checked["since"] = params.validated_data.get("since", 0)
    if last_event_id:
        field = serializers.IntegerField(min_value=0, max_value=EPOCH_MS_MAX)
        if not (last_event_id.isascii() and last_event_id.isdigit()):
            raise serializers.ValidationError(
                # Not echoed: a header's bytes come decoded as Latin-1 and would read garbled.
                {"Last-Event-ID": ["must be an event id: the digits of an epoch in ms"]}
            )
        try:
            checked["since"] = field.run_validation(last_event_id)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"Last-Event-ID": exc.detail}) from None
    return checked


class BatchDetailQuerySerializer(StrictQuerySerializer):
    seq_start = serializers.IntegerField(min_value=0, required=False)
    seq_end = serializers.IntegerField(min_value=0, required=False)
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(min_value=1, max_value=PAGE_SIZE_MAX, required=False)
