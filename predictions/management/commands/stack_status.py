from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from kafka_wire.topics import (
    ADMIN_TIMEOUT_S,
    admin_client,
    describe_topics,
    group_states,
    project_topics,
)
from predictions import health
from predictions.models import Job
from registry.models import ModelVersion
from stack.common import LOGS, STATE
from stack.supervise import Supervisor


class Command(BaseCommand):
    help = (
        "Show whether the database, Redis and Kafka are reachable, the lag of each topic "
        "partition in use, each registered model version's live workers and lag, the bridge "
        "group, jobs per status, and the state of each app process under supervisord "
        "(`make run`). Exits 1 when a service is unreachable, the default model has no live "
        "worker, or an app process is down or restarting."
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

        unserved = []
        if reachable["kafka"]:
            versions = (
                list(ModelVersion.objects.select_related("model")) if reachable["database"] else []
            )
            self.show_topics(versions)
            self.show_groups()
            unserved = self.show_models(versions)
        if reachable["database"]:
            self.show_jobs()
        not_running = self.show_app_processes()

        down = [name for name, ok in reachable.items() if not ok]
        problems = [f"unreachable: {', '.join(down)}"] if down else []
        if unserved:
            problems.append(f"the default model has no live worker: {', '.join(unserved)}")
        if not_running:
            problems.append(f"app processes down or restarting: {', '.join(not_running)}")
        if problems:
            raise CommandError("; ".join(problems))

    def show_app_processes(self) -> list[str]:
        """Print supervisord's view of the app processes; the names not RUNNING."""
        self.stdout.write("app processes")
        states = Supervisor(STATE, LOGS).states()
        if states is None:
            self.stdout.write("  not supervised here (`make run` runs them under supervisord)")
            return []
        for name, state in states.items():
            self.stdout.write(f"  {name:<10} {state}")
        return [name for name, state in states.items() if not state.startswith("RUNNING")]

    def show_topics(self, versions: list[ModelVersion]) -> None:
        """The results and dead-letter topics and each registered version's requests topic;
        the unregistered requests topic only once something was sent to it."""
        self.stdout.write("topics")
        unregistered = settings.KAFKA_REQUESTS_TOPIC
        for row in describe_topics(project_topics([version.route for version in versions])):
            if row.topic == unregistered and row.end_offset == 0:
                continue
            lag = "" if row.group is None else f"  group {row.group} lag {row.lag}"
            self.stdout.write(f"  {row.topic}[{row.partition}]  end {row.end_offset}{lag}")

    def show_models(self, versions: list[ModelVersion]) -> list[str]:
        """Each registered model version's live workers and lag, from its consumer group;
        returns the default model's enabled versions that no worker serves."""
        if not versions:
            return []
        self.stdout.write("models")
        states = group_states([version.route for version in versions])
        unserved = []
        for version in versions:
            state = states[version.route]
            flags = ("" if version.enabled else "  disabled") + (
                "  default" if version.model.is_default else ""
            )
            lag = "-" if state.lag is None else state.lag
            self.stdout.write(
                f"  {str(version):<20} {state.members} workers  lag {lag}  "
                f"group {version.route.worker_group}{flags}"
            )
            if version.model.is_default and version.enabled and state.members == 0:
                unserved.append(str(version))
        return unserved

    def show_groups(self) -> None:
        """The bridge's group; the unregistered requests topic's workers only when some
        run (every `make run` worker serves a registered version, in a group of its own)."""
        self.stdout.write("consumer groups")
        groups = {"bridge": settings.KAFKA_BRIDGE_GROUP, "workers": settings.KAFKA_WORKER_GROUP}
        # Kept in a variable: a client that is garbage collected never resolves its futures.
        admin = admin_client()
        futures = admin.describe_consumer_groups(
            list(groups.values()), request_timeout=ADMIN_TIMEOUT_S
        )
        for role, group in groups.items():
            description = futures[group].result(timeout=ADMIN_TIMEOUT_S)
            if role == "workers" and not description.members:
                continue
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
