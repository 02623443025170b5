"""Kafka in KRaft mode, every node a broker and a controller: the stack's single node and
the three-node cluster of the fault tests (`cluster up`)."""

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

from stack.common import (
    KAFKA_CLUSTER_PORT,
    KAFKA_CONTROLLER_PORT,
    KAFKA_LIBS,
    KAFKA_PORT,
    STATE,
    StackError,
    log_path,
    quiet,
    say,
    tcp_open,
)
from stack.services import Service

KAFKA_STARTED_LINE = "Kafka Server started"


@dataclass
class KafkaNode:
    """One Kafka process: the single node of the stack, or one of the cluster's three."""

    name: str  # service name, also its log file and its folder under STATE
    node_id: int
    port: int
    controller_port: int
    # Other voters as "id@host:port"; empty for the single node, which formats itself
    # as the one voter of a dynamic quorum.
    voters: tuple[str, ...] = ()
    cluster_id_file: Path = STATE / "kafka" / "cluster-id"
    # The address it listens on; the distributed tests give each node a host of its own.
    host: str = "127.0.0.1"

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.dir / "log4j2.properties"

    def server_properties(self) -> str:
        replicas, min_isr = (3, 2) if self.voters else (1, 1)
        quorum = (
            f"controller.quorum.voters={','.join(self.voters)}"
            if self.voters
            else f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}"
        )
        return f"""\
# Written by stack/kafka.py on every start; edit it, not this file.
process.roles=broker,controller
node.id={self.node_id}
{quorum}
listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}
advertised.listeners=PLAINTEXT://{self.host}:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={self.dir / "data"}
num.partitions=4
auto.create.topics.enable=false
# A write with acks=all needs min.insync.replicas copies: on the cluster a write
# survives the loss of one broker, and is refused rather than half-made with two down.
default.replication.factor={replicas}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
"""

    def log4j_properties(self) -> str:
        return f"""\
# Written by stack/kafka.py on every start.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_path(self.name)}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""

    def java(self, main: str, *args: str, jvm_options: tuple[str, ...] = ()) -> list[str]:
        return [
            "java",
            *jvm_options,
            "-cp",
            f"{KAFKA_LIBS}/*",
            f"-Dlog4j2.configurationFile={self.log4j}",
            main,
            *args,
        ]

    def cluster_id(self) -> str:
        """Generated once and kept: the storage is formatted with it (the same on every node)."""
        if not self.cluster_id_file.exists():
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            # Kafka's Uuid text form: URL-safe base64 of 16 random bytes, unpadded.
            self.cluster_id_file.write_text(
                base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n"
            )
        return self.cluster_id_file.read_text().strip()

    def prepare(self) -> None:
        if not (KAFKA_LIBS / ".pom.sha256").exists():
            raise StackError(
                f"{self.name}: jars missing in .stack/kafka/libs; "
                "run `python3 stack/stack.py install`"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.server_properties())
        self.log4j.write_text(self.log4j_properties())
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = self.cluster_id()
        say(f"{self.name}: first start, formatting storage (cluster id {cluster_id})...")
        # --standalone makes the single node the one voter of a dynamic KRaft quorum;
        # cluster nodes list their static voters in the config instead.
        standalone = () if self.voters else ("--standalone",)
        result = quiet(
            self.java(
                "kafka.tools.StorageTool",
                "format",
                # One argument with "=": an id may begin with "-" (one in 64 do), which as
                # a separate argument would be read as an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.config),
                *standalone,
                *self.format_args(),
            )
        )
        if result.returncode != 0:
            raise StackError(f"{self.name}: storage format failed:\n{result.stdout}{result.stderr}")

    def format_args(self) -> tuple[str, ...]:
        """More arguments for the storage format (the secured node adds its SCRAM user)."""
        return ()

    def argv(self) -> list[str]:
        return self.java(
            "kafka.Kafka",
            str(self.config),
            jvm_options=("-Xms256m", "-Xmx512m", "-Djava.awt.headless=true"),
        )

    def ready(self) -> bool:
        # The log is moved aside before each start, so the line is from this run.
        log = log_path(self.name)
        return (
            tcp_open(self.port)
            and log.exists()
            and KAFKA_STARTED_LINE in log.read_text(errors="replace")
        )

    def service(self) -> "Service":
        return Service(
            self.name,
            self.argv,
            self.port,
            f"TCP {self.port} open and '{KAFKA_STARTED_LINE}' in its log",
            self.ready,
            ready_timeout=90,
            prepare=self.prepare,
            stop_timeout=60,
        )


KAFKA = KafkaNode("kafka", 1, KAFKA_PORT, KAFKA_CONTROLLER_PORT)
CLUSTER_VOTERS = tuple(f"{i}@127.0.0.1:{KAFKA_CLUSTER_PORT + 99 + i}" for i in (1, 2, 3))
KAFKA_CLUSTER = [
    KafkaNode(
        f"kafka{i}",
        i,
        KAFKA_CLUSTER_PORT + i - 1,
        KAFKA_CLUSTER_PORT + 99 + i,
        voters=CLUSTER_VOTERS,
        cluster_id_file=STATE / "kafka-cluster-id",
    )
    for i in (1, 2, 3)
]
