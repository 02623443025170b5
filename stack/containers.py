"""The compose file under rootful Podman (`make test-compose`, docs/compose.md).

Docker is not installed here and Docker Hub is out of reach, so this installs Podman from
Debian, makes a Debian base image with debootstrap, builds stand-ins for the images the
compose file and docker/Dockerfile name (docker/standins/), builds Docker Compose v2 from
its Go module, and builds the app image from docker/Dockerfile. Each step is skipped when
done: the images stay in Podman's storage, the rest in .stack/containers/.

Podman has no systemd here to run healthchecks, so `healthchecks PROJECT` runs each
container's check at its interval (the compose file's `service_healthy` waits on them).

    python3 -m stack.containers install
    python3 -m stack.containers healthchecks PROJECT
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stack.common import KAFKA_LIBS, ROOT, StackError, quiet, say

DIR = ROOT / ".stack" / "containers"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
# Where this machine differs from a Docker host (each difference is said in the file).
COMPOSE_OVERRIDE = ROOT / "docker" / "compose.podman.yaml"
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.29.7"
COMPOSE_BIN = DIR / "bin" / "docker-compose"
# The Docker API that compose talks to: `podman system service` on this socket.
SOCKET = DIR / "podman.sock"
# Published by the override on 127.0.0.1 only: away from make run's 8000 and the dev stacks.
WEB_PORT = int(os.environ.get("STACK_COMPOSE_PORT", "48000"))
PROJECT = os.environ.get("STACK_COMPOSE_PROJECT", "inferencehub-compose-test")

APT_PACKAGES = [
    "podman",
    "buildah",
    "runc",
    "fuse-overlayfs",
    "slirp4netns",
    "uidmap",
    "netavark",
    "aardvark-dns",
    "catatonit",
    # netavark sets up the containers' NAT with it ("netavark (exit code 1)" without).
    "iptables",
    "debootstrap",
]
# No CAP_SYS_RESOURCE in this sandbox: the default ulimits (above the hard limit) fail with
# "setrlimit RLIMIT_NOFILE: Operation not permitted". crun refuses the hybrid cgroups.
CONTAINERS_CONF = Path("/etc/containers/containers.conf.d/50-inferencehub.conf")
CONTAINERS_CONF_TEXT = """\
# Written by stack/containers.py (make test-compose).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
"""
BASE_IMAGE = "local/debian:bookworm"
# The registries are reached through a proxy with its own authority: the base image trusts
# what the host trusts, or pip and apt over HTTPS fail with CERTIFICATE_VERIFY_FAILED.
HOST_AUTHORITIES = Path("/usr/local/share/ca-certificates")
# docker/standins/<folder> builds the image the compose file or the Dockerfile names.
STANDINS = {
    "python": "docker.io/library/python:3.11-slim-bookworm",
    "mariadb": "docker.io/library/mariadb:10.11",
    "redis": "docker.io/library/redis:7",
    "kafka": "docker.io/apache/kafka:4.1.0",
}
APP_IMAGE = "docker.io/library/inferencehub:latest"
HEARTBEAT_SECONDS = 30


def run_step(label: str, argv: list[str], **kwargs) -> None:
    """A long command with its output shown, a line at least every 30 s, and its time."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, **kwargs)
    while True:
        try:
            code = proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            say(f"[containers] {label}: still running ({time.monotonic() - started:.0f} s)...")
    if code != 0:
        raise StackError(f"[containers] {label}: failed with exit code {code}: {' '.join(argv)}")
    say(f"[containers] {label}: done in {time.monotonic() - started:.0f} s")


def install_apt() -> None:
    missing = [
        p
        for p in APT_PACKAGES
        if quiet(["dpkg-query", "-W", "-f=${Status}", p]).stdout != "install ok installed"
    ]
    if not missing:
        say("[containers] apt: Podman and its tools present, skipping")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_step("apt-get update", ["apt-get", "update", "-q"], env=env)
    install = ["apt-get", "install", "-y", "-q", *missing]
    run_step("apt-get install " + " ".join(missing), install, env=env)


def install_containers_conf() -> None:
    if CONTAINERS_CONF.exists() and CONTAINERS_CONF.read_text() == CONTAINERS_CONF_TEXT:
        return
    CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
    CONTAINERS_CONF.write_text(CONTAINERS_CONF_TEXT)
    say(f"[containers] wrote {CONTAINERS_CONF}")


def image_exists(name: str) -> bool:
    return quiet(["podman", "image", "exists", name]).returncode == 0


def image_id(name: str) -> str:
    return quiet(["podman", "image", "inspect", "--format", "{{.Id}}", name]).stdout.strip()


def install_base_image() -> None:
    if image_exists(BASE_IMAGE):
        say(f"[containers] {BASE_IMAGE}: present, skipping")
        return
    rootfs = DIR / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run_step(
        "debootstrap bookworm",
        [
            "debootstrap",
            "--variant=minbase",
            "--include=ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
    )
    for authority in HOST_AUTHORITIES.glob("*.crt"):
        shutil.copy(authority, rootfs / "usr/local/share/ca-certificates" / authority.name)
    run_step("update-ca-certificates", ["chroot", str(rootfs), "update-ca-certificates"])
    # As on Docker Hub's images: no package lists (each build runs apt-get update).
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run_step(
        f"podman import {BASE_IMAGE}",
        ["podman", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
        stdin=tar.stdout,
    )
    tar.wait()
    shutil.rmtree(rootfs)


def standin_context(folder: str) -> Path:
    """The build folder: the stand-in's own files, and for Kafka the broker's jars."""
    source = ROOT / "docker" / "standins" / folder
    if folder != "kafka":
        return source
    if not (KAFKA_LIBS / ".pom.sha256").exists():
        raise StackError("[containers] kafka: no jars in .stack/kafka/libs; run `make install`")
    context = DIR / "build" / "kafka"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(source, context)
    shutil.copytree(KAFKA_LIBS, context / "libs")
    return context


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def install_standins() -> None:
    for folder, tag in STANDINS.items():
        # Rebuilt when its files, the jars or the base image change.
        stamp = DIR / "stamps" / folder
        context = standin_context(folder)
        digest = f"{tree_digest(context)} {image_id(BASE_IMAGE)}"
        if image_exists(tag) and stamp.exists() and stamp.read_text().strip() == digest:
            say(f"[containers] {tag}: built from docker/standins/{folder}, unchanged, skipping")
            continue
        build(tag, [str(context)])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest + "\n")


def install_compose() -> None:
    stamp = COMPOSE_BIN.with_name("docker-compose.version")
    if COMPOSE_BIN.exists() and stamp.exists() and stamp.read_text().strip() == COMPOSE_VERSION:
        say(f"[containers] Docker Compose {COMPOSE_VERSION}: built, skipping")
        return
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise StackError("[containers] compose: Go (1.21 or later) is needed to build it")
    gobin = DIR / "gobin"
    version_flag = f"-X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    run_step(
        f"go install Docker Compose {COMPOSE_VERSION} (first run: a few minutes)",
        [go, "install", "-ldflags", version_flag, f"{COMPOSE_MODULE}/cmd@{COMPOSE_VERSION}"],
        env=dict(os.environ, GOBIN=str(gobin)),
    )
    COMPOSE_BIN.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(gobin / "cmd", COMPOSE_BIN)
    stamp.write_text(COMPOSE_VERSION + "\n")


def build(tag: str, args: list[str]) -> None:
    """Build and tag an image; the one it replaces, left untagged, is removed (it may hold
    gigabytes: the app image)."""
    previous = image_id(tag)
    # Docker's format: the OCI format drops HEALTHCHECK.
    argv = ["podman", "build", "--format", "docker", "-t", tag, *args]
    run_step(f"build {tag}", argv, cwd=ROOT)
    if previous and previous != image_id(tag):
        quiet(["podman", "rmi", previous])


def build_app_image() -> None:
    """docker/Dockerfile as it is; Podman's layer cache makes an unchanged build quick."""
    # BuildKit's ignore file beside the Dockerfile; Podman reads it only when told.
    build(
        APP_IMAGE,
        ["--ignorefile", "docker/Dockerfile.dockerignore", "-f", "docker/Dockerfile", "."],
    )


def install() -> None:
    if os.geteuid() != 0:
        raise StackError("[containers] rootful Podman: run as root")
    DIR.mkdir(parents=True, exist_ok=True)
    install_apt()
    install_containers_conf()
    install_base_image()
    install_standins()
    install_compose()
    build_app_image()
    say("[containers] all done")


def compose_env() -> dict[str, str]:
    """What compose needs to reach Podman, and this machine's settings of the compose file."""
    return dict(
        os.environ,
        DOCKER_HOST=f"unix://{SOCKET}",
        # Podman's Docker API has no BuildKit; the images are built beforehand anyway.
        DOCKER_BUILDKIT="0",
        STACK_COMPOSE_PORT=str(WEB_PORT),
        # Keras' download host is out of reach here: ImageNet weights would stop every worker.
        MODEL_WEIGHTS=os.environ.get("MODEL_WEIGHTS", "random"),
    )


def compose_argv(*args: str, project: str = PROJECT) -> list[str]:
    return [
        str(COMPOSE_BIN),
        "-f",
        str(COMPOSE_FILE),
        "-f",
        str(COMPOSE_OVERRIDE),
        "-p",
        project,
        *args,
    ]


def service_argv() -> list[str]:
    """Podman's Docker API for compose; `--time 0`: it serves until stopped."""
    return ["podman", "system", "service", "--time", "0", f"unix://{SOCKET}"]


def seconds(duration_ns: int | None, default: float) -> float:
    return duration_ns / 1e9 if duration_ns else default


def healthchecks(project: str) -> None:
    """Run each of the project's containers' healthchecks at its interval, for ever: without
    systemd nothing else does, and `podman healthcheck run` records the result."""
    due: dict[str, float] = {}
    running: dict[str, subprocess.Popen] = {}
    while True:
        listed = quiet(
            [
                "podman",
                "ps",
                "--filter",
                f"label=com.docker.compose.project={project}",
                "--format",
                "{{.ID}}",
            ]
        ).stdout.split()
        for cid in listed:
            if cid in running:
                if running[cid].poll() is None:
                    continue
                del running[cid]
            if time.monotonic() < due.get(cid, 0):
                continue
            inspected = quiet(["podman", "inspect", "--format", "json", cid])
            if inspected.returncode != 0:
                continue
            check = json.loads(inspected.stdout)[0]["Config"].get("Healthcheck") or {}
            if not check.get("Test") or check["Test"][0] == "NONE":
                due[cid] = float("inf")
                continue
            running[cid] = subprocess.Popen(
                ["podman", "healthcheck", "run", cid],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            due[cid] = time.monotonic() + seconds(check.get("Interval"), 30)
        time.sleep(1)


def main(argv: list[str]) -> int:
    try:
        if argv == ["install"]:
            install()
        elif len(argv) == 2 and argv[0] == "healthchecks":
            healthchecks(argv[1])
        else:
            say(__doc__)
            return 2
    except StackError as error:
        say(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
