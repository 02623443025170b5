"""Test hosts on one machine: a network namespace per host, joined by a bridge of their own.

Every host gets an address from 198.51.100.0/24 (a documentation range) on one veth pair
whose outer end is a port of the bridge `ihub-br`. The bridge has no address, the hosts have
no default route and nothing forwards or translates, so the hosts reach one another and
nothing else. Everything made here is named `ihub-...` (veth outer ends `ihv-...`), so that a
run killed half-way is cleaned up by the next one (remove_all) as well as by its own end.

A cut link is the host's interface set down: the cable pulled, as seen by both sides.
Packet loss is an nftables `numgen random` drop rule inside the host (this kernel has no
netem), and a bandwidth cap a `tc tbf` qdisc on the host's interface.
"""

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "ihub-"
BRIDGE = "ihub-br"
NETWORK = "198.51.100"
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def outer_link(self) -> str:
        return f"ihv-{self.name}"

    def exec_argv(self, argv: list[str]) -> list[str]:
        """argv run inside this host (`ip netns exec` execs it: same pid, signals reach it)."""
        return ["ip", "netns", "exec", self.netns, *argv]


HOSTS = {
    host.name: host
    for host in (
        Host("core", f"{NETWORK}.10"),
        Host("broker1", f"{NETWORK}.11"),
        Host("broker2", f"{NETWORK}.12"),
        Host("broker3", f"{NETWORK}.13"),
        Host("worker1", f"{NETWORK}.21"),
        Host("worker2", f"{NETWORK}.22"),
        Host("worker3", f"{NETWORK}.23"),
        Host("client", f"{NETWORK}.40"),
    )
}
BROKERS = [HOSTS[f"broker{i}"] for i in (1, 2, 3)]


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def check_tools() -> None:
    """Fail clearly when the suite cannot build its hosts here."""
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"missing {', '.join(missing)}: install the Debian packages iproute2 and nftables "
            "(python3 stack/stack.py install does)"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the distributed tests make network namespaces: run them as root")


def remove_all() -> None:
    """Remove every namespace and link of this suite, from this run or a killed one.

    The namespaces take their nftables rules and qdiscs with them."""
    # Links first: a deleted namespace frees its veth pairs only some time later.
    for line in run("ip", "-o", "link", "show").splitlines():
        link = line.split(":")[1].strip().split("@")[0]
        if link == BRIDGE or link.startswith("ihv-"):
            run("ip", "link", "delete", link)
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            run("ip", "netns", "delete", name)


def build() -> None:
    """The bridge and every host on it, each with lo and its one address, no route out."""
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "link", "set", BRIDGE, "up")
    for host in HOSTS.values():
        run("ip", "netns", "add", host.netns)
        run("ip", "-n", host.netns, "link", "set", "lo", "up")
        run(
            "ip", "link", "add", host.outer_link, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns,
        )  # fmt: skip
        run("ip", "link", "set", host.outer_link, "master", BRIDGE, "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run("ip", "-n", host.netns, "link", "set", "eth0", "up")


def routes(host: Host) -> str:
    return run("ip", "-n", host.netns, "route", "show")


def set_link(host: Host, up: bool) -> None:
    """The host's interface down (the cable pulled: the bridge side loses carrier) or up."""
    run("ip", "-n", host.netns, "link", "set", "eth0", "up" if up else "down")


def add_packet_loss(host: Host, peers: list[Host], percent: int) -> None:
    """Drop `percent` % of the packets between host and peers, both ways, inside host."""
    addresses = "{ " + ", ".join(peer.address for peer in peers) + " }"
    nft = ["ip", "netns", "exec", host.netns, "nft"]
    run(*nft, "add", "table", "inet", "ihub")
    for chain, hook, field in (("out", "output", "daddr"), ("in", "input", "saddr")):
        hooked = f"{{ type filter hook {hook} priority 0; }}"
        run(*nft, "add", "chain", "inet", "ihub", chain, hooked)
        run(
            *nft, "add", "rule", "inet", "ihub", chain, "ip", field, addresses,
            "numgen", "random", "mod", "100", "<", str(percent), "drop",
        )  # fmt: skip


def remove_packet_loss(host: Host) -> None:
    run("ip", "netns", "exec", host.netns, "nft", "delete", "table", "inet", "ihub")


def cap_bandwidth(host: Host, rate: str) -> None:
    """A token bucket on everything the host sends (its uplink)."""
    run(
        "ip", "netns", "exec", host.netns, "tc", "qdisc", "add", "dev", "eth0", "root",
        "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
    )  # fmt: skip


def remove_bandwidth_cap(host: Host) -> None:
    run("ip", "netns", "exec", host.netns, "tc", "qdisc", "delete", "dev", "eth0", "root")


def rules(host: Host) -> str:
    """The host's nftables rules and qdiscs, as the kernel holds them."""
    nft = run("ip", "netns", "exec", host.netns, "nft", "list", "ruleset")
    tc = run("ip", "netns", "exec", host.netns, "tc", "qdisc", "show", "dev", "eth0")
    return nft + tc


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """Run the calling thread in host's network: its sockets, and threads and processes it
    starts meanwhile, are the host's (the test's own view, from the client host)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
