"""Several hosts, for real: the pipeline across network namespaces while links fail.

Each scenario reports, as the fault suite does, jobs sent / accepted / succeeded / failed /
lost / duplicated and the time to recover (reported, never asserted), appended to
.stack/logs/distributed/outcomes.jsonl for docs/distributed.md."""

import json
import subprocess
import time

import pytest

from tests.distributed import hosts
from tests.distributed.conftest import HostedApp, link_down
from tests.distributed.hosts import BROKERS, HOSTS
from tests.faults.conftest import (
    JobStream,
    assert_nothing_lost,
    settle,
    wait_for_progress,
    wait_until_finished,
)

pytestmark = pytest.mark.distributed

CUT_S = 30
# Faster than core's preprocessing keeps up with on this machine (docs/distributed.md,
# Scaling), so the workers are never short of uploads; more would only make a longer
# backlog to drain after the measurement.
SCALE_RATE = 8


def rates_over(app: HostedApp, stream: JobStream, seconds: float) -> tuple[float, float]:
    """Uploads accepted per second and jobs stored per second, over the next `seconds`."""
    accepted, stored, started = len(stream.snapshot()), app.succeeded(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return (
        round((len(stream.snapshot()) - accepted) / elapsed, 1),
        round((app.succeeded() - stored) / elapsed, 1),
    )


def listening_addresses(host_name: str) -> set[str]:
    """The addresses TCP sockets listen on in a host (IPv4-mapped ones as plain IPv4)."""
    shown = subprocess.run(
        HOSTS[host_name].exec_argv(["ss", "-Hltn"]), capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split()[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        for line in shown.splitlines()
    }


def test_a_stream_from_the_client_host_finishes_across_hosts_on_both_worker_hosts(start_app):
    app = start_app("stream")
    with JobStream(app, rate=6, limit=150) as stream:
        while not stream.done():
            time.sleep(1)
    sent_at = time.monotonic()
    wait_until_finished(app, stream.snapshot(), timeout=600)
    per_host = app.jobs_per_host()
    outcome = settle(
        "1. a stream of uploads from the client host",
        app,
        stream,
        fault_at=sent_at,
        notes=f"succeeded jobs per worker host: {dict(per_host)}",
    )
    assert_nothing_lost(outcome)
    assert outcome.accepted == 150
    assert per_host["worker1"] > 0 and per_host["worker2"] > 0, per_host
    # Each host reaches the others only, and listens on its own address alone.
    for host in HOSTS.values():
        assert "default" not in hosts.routes(host), host
    for name in ("core", "broker1", "broker2", "broker3"):
        assert listening_addresses(name) == {HOSTS[name].address}, name
    assert listening_addresses("worker1") == set()


def test_a_worker_host_cut_off_for_30_s_hands_its_partitions_over_and_nothing_is_lost(
    start_app,
):
    app = start_app("worker-cut")
    with JobStream(app, rate=6) as stream:
        wait_for_progress(app, 10)
        before = app.jobs_per_host()
        with link_down(HOSTS["worker1"]):
            cut_at = time.monotonic()
            time.sleep(CUT_S)
            during = app.jobs_per_host()
        time.sleep(10)
    wait_until_finished(app, stream.snapshot(), timeout=600)
    outcome = settle(
        f"2. worker host 1 cut off (link down) for {CUT_S} s mid-stream, then back",
        app,
        stream,
        fault_at=cut_at,
        notes=f"jobs stored by worker host 2 during the cut: "
        f"{during['worker2'] - before['worker2']}; per host in all: {dict(app.jobs_per_host())}",
    )
    assert_nothing_lost(outcome)
    # The partitions of the cut-off host moved: its jobs were done by the other one meanwhile.
    assert during["worker2"] - before["worker2"] > CUT_S, (before, during)


def test_a_lossy_slow_network_between_core_and_brokers_is_slower_and_still_correct(start_app):
    app = start_app("bad-network")
    core = HOSTS["core"]
    with JobStream(app, rate=4) as stream:
        wait_for_progress(app, 10)
        _, stored_before = rates_over(app, stream, 15)
        hosts.add_packet_loss(core, BROKERS, percent=2)
        hosts.cap_bandwidth(core, "2mbit")
        try:
            bad_at = time.monotonic()
            applied = hosts.rules(core)
            _, stored_during = rates_over(app, stream, 60)
        finally:
            hosts.remove_packet_loss(core)
            hosts.remove_bandwidth_cap(core)
        time.sleep(10)
    outcome = settle(
        "3. a minute of 2 % packet loss between core and the brokers, core's uplink capped "
        "at 2 Mbit/s",
        app,
        stream,
        fault_at=bad_at,
        notes=f"jobs stored per second before: {stored_before}, during: {stored_during}",
    )
    print(applied)
    assert "numgen random mod 100 < 2 drop" in applied
    assert "tbf" in applied
    assert_nothing_lost(outcome)
    assert stored_during < stored_before, (stored_before, stored_during)


def test_the_requests_partition_leaders_host_cut_off_gets_a_new_leader_and_the_stream_goes_on(
    start_app,
):
    app = start_app("leader-cut")
    with JobStream(app, rate=6) as stream:
        wait_for_progress(app, 10)
        leader = app.leader_host(0)
        with link_down(leader):
            cut_at, stored_before = time.monotonic(), app.succeeded()
            time.sleep(CUT_S - 10)
            new_leader = app.leader_host(0)
            accepted_during, stored_per_s = rates_over(app, stream, 10)
            stored_during = app.succeeded() - stored_before
        time.sleep(10)
    outcome = settle(
        f"4. the host of the requests topic's partition-0 leader ({leader.name}) cut off "
        f"for {CUT_S} s",
        app,
        stream,
        fault_at=cut_at,
        notes=f"new leader: {new_leader.name}; jobs stored during the cut: {stored_during}; "
        f"over its last 10 s, uploads accepted per second: {accepted_during}, jobs stored "
        f"per second: {stored_per_s}",
    )
    assert new_leader != leader
    assert accepted_during > 0
    # Clients give up a request to the silent broker after KAFKA_SOCKET_TIMEOUT_MS (5 s
    # here) instead of librdkafka's 60 s, so storing goes on within the cut too.
    assert stored_during > 0, outcome
    assert_nothing_lost(outcome)


def test_a_third_worker_host_added_during_a_stream_takes_a_share_of_the_work(start_app):
    app = start_app("scale", workers=1)
    curve = {}
    with JobStream(app, rate=SCALE_RATE, threads=2) as stream:
        wait_for_progress(app, 10)
        scaled_at = time.monotonic()
        for count in (1, 2, 3):
            if count > 1:
                app.start_worker_host(HOSTS[f"worker{count}"])
                time.sleep(10)  # the group rebalances
            curve[count] = rates_over(app, stream, 20)
    figures = {
        f"{n} worker host{'s' if n > 1 else ''}": {"uploads/s": a, "jobs stored/s": s}
        for n, (a, s) in curve.items()
    }
    wait_until_finished(app, stream.snapshot(), timeout=600)
    outcome = settle(
        f"5. worker hosts added one by one during a stream of {SCALE_RATE} uploads/s",
        app,
        stream,
        fault_at=scaled_at,
        notes=f"{json.dumps(figures)}; per host: {dict(app.jobs_per_host())}",
    )
    assert_nothing_lost(outcome)
    assert app.jobs_per_host()["worker3"] > 0
