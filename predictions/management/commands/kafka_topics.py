"""`manage.py kafka_topics create|describe`: set up the topics, with every registered model
version's requests topic, or show partitions and lag."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kafka_wire.config import ModelRoute
from kafka_wire.producer import TRANSIENT_ERRORS
from kafka_wire.topics import describe_topics, ensure_topics, project_topics
from registry.models import ModelVersion


def registered_routes() -> list[ModelRoute]:
    return [version.route for version in ModelVersion.objects.select_related("model")]


class Command(BaseCommand):
    help = "Create the InferenceHub Kafka topics, or describe their partitions and consumer lag."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["create", "describe"])

    def handle(self, *args, action: str, **options):
        try:
            if action == "create":
                self.create()
            else:
                self.describe()
        except TRANSIENT_ERRORS as error:
            raise CommandError(
                f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not answer: {error}"
            ) from None

    def create(self) -> None:
        routes = registered_routes()
        created = ensure_topics(models=routes)
        for name in project_topics(routes):
            state = "created" if name in created else "exists"
            self.stdout.write(
                f"{name}: {state} (wanted {settings.KAFKA_TOPIC_PARTITIONS} partitions, "
                f"replication factor {settings.KAFKA_REPLICATION_FACTOR})"
            )

    def describe(self) -> None:
        topics = project_topics(registered_routes())
        rows = describe_topics(topics)
        header = ("topic", "partition", "end offset", "group", "committed", "lag")
        table = [header] + [
            (
                row.topic,
                str(row.partition),
                str(row.end_offset),
                row.group or "-",
                "-" if row.committed is None else str(row.committed),
                "-" if row.lag is None else str(row.lag),
            )
            for row in rows
        ]
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]
        for line in table:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            )
        missing = sorted(set(topics) - {row.topic for row in rows})
        if missing:
            raise CommandError(
                f"missing topics: {', '.join(missing)}; run `manage.py kafka_topics create`"
            )
