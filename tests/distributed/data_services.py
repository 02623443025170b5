"""The distributed hosts' data services, as the stack package defines them, in a state
folder of their own.

The stack package reads its state folder and ports (STACK_DIR, STACK_*_PORT) once, when
stack.common is imported, and the test process has already imported it for the shared
stack. So the suite runs this module as a child process with the distributed settings in
its environment (tests/distributed/conftest.py: `data_services`):

    prepare CORE_ADDRESS BROKER_ADDRESS...   a fresh state folder; prints the command lines
                                             (MariaDB, Redis, one Kafka node per broker) and
                                             how to tell each is ready, as JSON (last line)
    ready                                    exit 0 once MariaDB answers on its socket
    setup NETWORK_PREFIX                     the database, and its user for every test host
"""

import json
import shutil
import sys

from stack import common, kafka, services


def prepare(core: str, brokers: list[str]) -> dict:
    shutil.rmtree(common.STATE, ignore_errors=True)
    common.LOGS.mkdir(parents=True)
    services.mariadb_prepare()
    voters = tuple(
        f"{i}@{address}:{common.KAFKA_CONTROLLER_PORT}" for i, address in enumerate(brokers, 1)
    )
    nodes = [
        kafka.KafkaNode(
            f"kafka{i}",
            i,
            common.KAFKA_PORT,
            common.KAFKA_CONTROLLER_PORT,
            voters=voters,
            cluster_id_file=common.STATE / "kafka-cluster-id",
            host=address,
        )
        for i, address in enumerate(brokers, 1)
    ]
    for node in nodes:
        node.prepare()
    return {
        "mariadb": services.mariadb_argv(core),
        # With a password (in the state folder), as under `make run`: Redis then takes
        # clients from the other hosts.
        "redis": services.redis_argv(core),
        "kafka": [{"argv": node.argv(), "log": str(common.log_path(node.name))} for node in nodes],
        "kafka_started": kafka.KAFKA_STARTED_LINE,
    }


def setup(network_prefix: str) -> None:
    """Once MariaDB answers on its socket: the stack's database, and its user for the hosts."""
    services.mariadb_setup()
    grant = services.mariadb_client(
        "-e",
        f"CREATE USER IF NOT EXISTS 'inferencehub'@'{network_prefix}.%' "
        f"IDENTIFIED BY 'inferencehub'; "
        f"GRANT ALL ON inferencehub.* TO 'inferencehub'@'{network_prefix}.%';",
    )
    if grant.returncode != 0:
        raise SystemExit(grant.stderr)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "prepare":
        print(json.dumps(prepare(args[0], args[1:])))
    elif command == "ready":
        sys.exit(0 if services.mariadb_ready() else 1)
    elif command == "setup":
        setup(args[0])
    else:
        raise SystemExit(f"unknown command {command!r}: prepare, ready or setup")


if __name__ == "__main__":
    main(sys.argv[1:])
