"""`manage.py kafka_topics create|describe`: set up the topics, or show partitions and lag."""

from confluent_kafka import KafkaException
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kafka_bridge.topics import describe_topics, ensure_topics, project_topics


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
        except KafkaException as error:
            raise CommandError(
                f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not answer: {error.args[0]}"
            ) from None

    def create(self) -> None:
        created = ensure_topics()
        for name in project_topics():
            state = "created" if name in created else "exists"
            self.stdout.write(
                f"{name}: {state} (wanted {settings.KAFKA_TOPIC_PARTITIONS} partitions, "
                f"replication factor {settings.KAFKA_REPLICATION_FACTOR})"
            )

    def describe(self) -> None:
        rows = describe_topics()
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
        missing = sorted(set(project_topics()) - {row.topic for row in rows})
        if missing:
            raise CommandError(
                f"missing topics: {', '.join(missing)}; run `manage.py kafka_topics create`"
            )
