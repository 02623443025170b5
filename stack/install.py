"""`install`: apt packages, .venv with requirements.txt, the Kafka and s3proxy jars; `install
dev`: the test and lint tools (requirements-dev.txt). Each step is skipped when done, prints
one line and keeps its tools' full output in .stack/logs/install/<step>.log."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stack.common import (
    KAFKA_LIBS,
    ROOT,
    SERVICE_USER,
    STATE,
    VENV,
    StackError,
    log_path,
    log_tail,
    quiet,
    say,
)

APT_PACKAGES = [
    "mariadb-server",
    "redis-server",
    # The front door (stack/nginx.conf).
    "nginx",
    "libmariadb-dev",
    "pkg-config",
    "chromium",
    "chromium-driver",
    # Network namespaces, packet loss and bandwidth caps of the distributed tests.
    "iproute2",
    "nftables",
]
# Present on this machine kind outside apt; installed from apt only if missing.
APT_FOR_MISSING_COMMANDS = {"java": "openjdk-17-jre-headless", "mvn": "maven"}
REQUIREMENTS = ROOT / "requirements.txt"
# Includes requirements.txt (-r), so pip resolves the tools against the runtime's pins.
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
POM = ROOT / "stack" / "pom.xml"
S3PROXY_POM = ROOT / "stack" / "s3proxy-pom.xml"
ZIPKIN_POM = ROOT / "stack" / "zipkin-pom.xml"
# Shared by every stack, like the Kafka jars.
S3PROXY_LIBS = ROOT / ".stack" / "s3proxy" / "libs"
ZIPKIN_LIBS = ROOT / ".stack" / "zipkin" / "libs"
HEARTBEAT_SECONDS = 30  # a long step's line grows at least this often


def run_step(step: str, label: str, *commands: list[str], env: dict | None = None) -> None:
    """Run a step's commands one after the other, their output in the step's log and one
    line on the terminal: Maven, apt and pip print thousands of lines a user never reads
    unless something fails. The line grows by the elapsed time every HEARTBEAT_SECONDS, so
    a long step (pip downloading TensorFlow) never looks hung. On failure the error
    carries the log's path and its last lines."""
    log = log_path(f"install/{step}")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"[install] {label} ...", end="", flush=True)
    with log.open("w") as out:
        for argv in commands:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            while True:
                try:
                    code = proc.wait(timeout=HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    print(f" {time.monotonic() - started:.0f} s ...", end="", flush=True)
            if code != 0:
                say(f" failed (exit code {code})")
                raise StackError(
                    f"[install] {label}: `{' '.join(argv)}` failed with exit code {code};"
                    f" full output in {log}\n{log_tail(f'install/{step}')}"
                )
    say(f" done in {time.monotonic() - started:.0f} s")


def apt_missing() -> list[str]:
    missing = [
        p
        for p in APT_PACKAGES
        if quiet(["dpkg-query", "-W", "-f=${Status}", p]).stdout != "install ok installed"
    ]
    missing += [pkg for cmd, pkg in APT_FOR_MISSING_COMMANDS.items() if not shutil.which(cmd)]
    return missing


def install_apt() -> None:
    missing = apt_missing()
    if not missing:
        say("[install] apt: all packages present, skipping")
        return
    if os.geteuid() != 0:
        raise StackError(f"[install] apt: missing {' '.join(missing)}; run as root or install them")
    run_step(
        "apt",
        f"apt: {len(missing)} packages ({' '.join(missing)})",
        ["apt-get", "update"],
        ["apt-get", "install", "-y", *missing],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )


def install_service_user() -> None:
    """The system user Redis and nginx's workers run as when the stack runs as root: a
    data service or a process facing clients, if broken into, gets no root with it."""
    if os.geteuid() != 0 or quiet(["id", "-u", SERVICE_USER]).returncode == 0:
        return
    say(f"[install] user: creating the system user {SERVICE_USER}")
    created = quiet(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    )
    if created.returncode != 0:
        raise StackError(f"[install] user: useradd {SERVICE_USER} failed: {created.stderr}")


def install_venv() -> None:
    if (VENV / "bin" / "python").exists():
        say("[install] venv: .venv exists, skipping")
        return
    run_step("venv", "venv: creating .venv", [sys.executable, "-m", "venv", str(VENV)])


def install_requirements() -> None:
    install_pip(
        "runtime",
        REQUIREMENTS,
        "first run downloads ~700 MB: TensorFlow",
        stamp=STATE / "requirements.sha256",
    )


def install_dev_requirements() -> None:
    if not (VENV / "bin" / "python").exists():
        raise StackError("[install] pip (dev): no .venv; `python3 stack/stack.py install` first")
    # The stamp covers requirements.txt too: the file includes it.
    install_pip(
        "dev",
        DEV_REQUIREMENTS,
        "the test and lint tools",
        stamp=STATE / "requirements-dev.sha256",
        also_hashed=REQUIREMENTS,
    )


def install_pip(
    kind: str, requirements: Path, what: str, *, stamp: Path, also_hashed: Path | None = None
) -> None:
    if not requirements.exists():
        raise StackError(f"[install] pip ({kind}): {requirements} not found")
    digest = hashlib.sha256(requirements.read_bytes())
    if also_hashed:
        digest.update(also_hashed.read_bytes())
    if stamp.exists() and stamp.read_text().strip() == digest.hexdigest():
        say(f"[install] pip ({kind}): {requirements.name} unchanged since last install, skipping")
        return
    run_step(
        f"pip-{kind}",
        f"pip ({kind}): {requirements.name} ({what})",
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
    )
    # Written only after success, so a failed or interrupted install is retried.
    stamp.write_text(digest.hexdigest() + "\n")


def install_kafka_jars() -> None:
    install_jars("kafka", POM, KAFKA_LIBS, "Kafka broker jars (first run downloads ~60 MB)")


def install_s3proxy_jars() -> None:
    # A folder of its own, so the two classpaths never mix.
    install_jars("s3proxy", S3PROXY_POM, S3PROXY_LIBS, "s3proxy jars (first run downloads ~70 MB)")


def install_zipkin_jar() -> None:
    # Only when traces are asked for (make run TRACES=1): most runs never need it.
    install_jars("zipkin", ZIPKIN_POM, ZIPKIN_LIBS, "Zipkin server (first run downloads ~135 MB)")


def install_jars(name: str, pom: Path, libs: Path, what: str) -> None:
    # The stamp holds the pom's hash: editing the pom (e.g. a new version) re-copies the
    # jars into an emptied folder, so old versions don't linger.
    stamp = libs / ".pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        say(f"[install] {name}: jars present in {libs.relative_to(ROOT)}, skipping")
        return
    shutil.rmtree(libs, ignore_errors=True)
    run_step(
        name,
        f"{name}: {what}, resolved by Maven",
        [
            "mvn",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
        ],
    )
    stamp.write_text(digest + "\n")


def cmd_install(names: list[str]) -> int:
    """No names: what running needs; `dev`: the test and lint tools, once that is done."""
    if names not in ([], ["dev"]):
        raise StackError("usage: stack.py install [dev]")
    STATE.mkdir(exist_ok=True)
    if names == ["dev"]:
        install_dev_requirements()
        return 0
    install_apt()
    install_service_user()
    install_venv()
    install_requirements()
    install_kafka_jars()
    install_s3proxy_jars()
    say("[install] all done")
    return 0
