"""`install`: apt packages, .venv with the requirements, the Kafka jars; each skipped when done."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stack.common import KAFKA_LIBS, ROOT, SERVICE_USER, STATE, VENV, StackError, quiet, say

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
POM = ROOT / "stack" / "pom.xml"
S3PROXY_POM = ROOT / "stack" / "s3proxy-pom.xml"
# Shared by every stack, like the Kafka jars.
S3PROXY_LIBS = ROOT / ".stack" / "s3proxy" / "libs"
HEARTBEAT_SECONDS = 30  # long install steps print at least this often


def run_step(label: str, argv: list[str], **kwargs) -> None:
    """Run a long install command with its output visible, plus a heartbeat line
    so that a step whose tool prints nothing for a while (pip downloading a large
    wheel without a terminal) never looks hung."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, **kwargs)
    while True:
        try:
            code = proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            say(f"[install] {label}: still running ({time.monotonic() - started:.0f} s)...")
    if code != 0:
        raise StackError(f"[install] {label}: failed with exit code {code}: {' '.join(argv)}")
    say(f"[install] {label}: done in {time.monotonic() - started:.0f} s")


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
    say(f"[install] apt: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_step("apt-get update", ["apt-get", "update"], env=env)
    run_step("apt-get install", ["apt-get", "install", "-y", *missing], env=env)


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
    say("[install] venv: creating .venv")
    run_step("venv", [sys.executable, "-m", "venv", str(VENV)])


def install_requirements() -> None:
    if not REQUIREMENTS.exists():
        raise StackError(f"[install] pip: {REQUIREMENTS} not found")
    stamp = STATE / "requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        say("[install] pip: requirements.txt unchanged since last install, skipping")
        return
    say("[install] pip: installing requirements (first run downloads ~700 MB: TensorFlow)...")
    run_step(
        "pip",
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
    )
    # Written only after success, so a failed or interrupted install is retried.
    stamp.write_text(digest + "\n")


def install_kafka_jars() -> None:
    install_jars("kafka", POM, KAFKA_LIBS, "Kafka broker jars (first run downloads ~60 MB)")


def install_s3proxy_jars() -> None:
    # A folder of its own, so the two classpaths never mix.
    install_jars("s3proxy", S3PROXY_POM, S3PROXY_LIBS, "s3proxy jars (first run downloads ~70 MB)")


def install_jars(name: str, pom: Path, libs: Path, what: str) -> None:
    # The stamp holds the pom's hash: editing the pom (e.g. a new version) re-copies the
    # jars into an emptied folder, so old versions don't linger.
    stamp = libs / ".pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        say(f"[install] {name}: jars present in {libs.relative_to(ROOT)}, skipping")
        return
    say(f"[install] {name}: resolving {what} with Maven...")
    shutil.rmtree(libs, ignore_errors=True)
    run_step(
        "maven",
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


def cmd_install(_names: list[str]) -> int:
    STATE.mkdir(exist_ok=True)
    install_apt()
    install_service_user()
    install_venv()
    install_requirements()
    install_kafka_jars()
    install_s3proxy_jars()
    say("[install] all done")
    return 0
