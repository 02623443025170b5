from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from inferencehub import health
from kafka_bridge.topics import ADMIN_TIMEOUT_S, admin_client, describe_topics
from predictions.models import Job


class Command(BaseCommand):
    help = (
        "Show whether the database, Redis and Kafka are reachable, the lag of each topic "
        "partition, the live members of the worker and bridge groups, and jobs per status. "
        "Exits 1 when a service is unreachable."
    )

    def handle(self, *args, **options):
        reachable = {}
        self.stdout.write("services")
        for name, check in health.CHECKS.items():
            try:
                check()
            except Exception as exc:  # any failure means unreachable; say what it was
                reachable[name] = False
                self.stdout.write(f"  {name:<10} UNREACHABLE  {type(exc).__name__}: {exc}")
            else:
                reachable[name] = True
                self.stdout.write(f"  {name:<10} ok")

        if reachable["kafka"]:
            self.show_topics()
            self.show_groups()
        if reachable["database"]:
            self.show_jobs()

        down = [name for name, ok in reachable.items() if not ok]
        if down:
            raise CommandError(f"unreachable: {', '.join(down)}")

    def show_topics(self) -> None:
        self.stdout.write("topics")
        for row in describe_topics():
            lag = "" if row.group is None else f"  group {row.group} lag {row.lag}"
            self.stdout.write(f"  {row.topic}[{row.partition}]  end {row.end_offset}{lag}")

    def show_groups(self) -> None:
        self.stdout.write("consumer groups")
        groups = {
            "workers": settings.KAFKA_WORKER_GROUP,
            "bridge": settings.KAFKA_BRIDGE_GROUP,
        }
        # Kept in a variable: a client that is garbage collected never resolves its futures.
        admin = admin_client()
        futures = admin.describe_consumer_groups(
            list(groups.values()), request_timeout=ADMIN_TIMEOUT_S
        )
        for role, group in groups.items():
            description = futures[group].result(timeout=ADMIN_TIMEOUT_S)
            self.stdout.write(
                f"  {role:<8} {group}  {len(description.members)} alive  "
                f"({description.state.name.lower()})"
            )
            for member in description.members:
                partitions = ", ".join(
                    f"{tp.topic}[{tp.partition}]"
                    for tp in (member.assignment.topic_partitions if member.assignment else [])
                )
                self.stdout.write(f"    {member.client_id} {member.host}  {partitions}")

    def show_jobs(self) -> None:
        counts = dict(Job.objects.values_list("status").annotate(n=Count("pk")).order_by())
        self.stdout.write("jobs")
        for status in Job.Status.values:
            self.stdout.write(f"  {status:<13} {counts.get(status, 0)}")
