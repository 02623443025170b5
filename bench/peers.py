"""The peers' virtual environments: each peer framework in a venv of its own under
.stack/peers/<name>, so that it never moves the project's pins (its own numpy, its own web
stack). Made by the benchmark the first time a peer is measured and kept: a venv is made
again only when what it should hold changes.

A peer serves the same model package with the project's own code (serving/, common/ on its
PYTHONPATH), so its venv also holds what that code imports, at the project's pins.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

from stack.harness import REPO

PEERS_DIR = REPO / ".stack" / "peers"
# Each peer's own framework, pinned (checked on PyPI).
FRAMEWORKS = {
    "ray": ["ray[serve]==2.60.0"],
    "bentoml": ["bentoml==1.4.40"],
    "mlserver": ["mlserver==1.7.1"],
}
# What serving/ and common/ import to load a package and decode an image: the versions are
# read from requirements.txt, the one place they are pinned.
PROJECT_PACKAGES = ("numpy", "pillow", "openvino")
STAMP = "inferencehub-peer.json"


def project_pins(requirements: Path = REPO / "requirements.txt") -> list[str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    return [pins[name] for name in PROJECT_PACKAGES]


def peer_python(name: str, log=print) -> Path:
    """The Python of the peer's venv, made and installed first if it is missing or holds
    other versions. Raises PeerUnavailable with pip's last words when it cannot be made."""
    folder = PEERS_DIR / name
    python = folder / "bin" / "python"
    wanted = [*FRAMEWORKS[name], *project_pins()]
    stamp = folder / STAMP
    if python.exists() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return python
    log(f"  making the {name} peer's venv in {folder} ({' '.join(wanted)}) ...")
    stamp.unlink(missing_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(folder)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerUnavailable(
                f"could not make the {name} peer's venv ({' '.join(step[:4])} ...): "
                + (done.stderr or done.stdout).strip()[-500:]
            )
    stamp.write_text(json.dumps(wanted) + "\n")
    return python


class PeerUnavailable(RuntimeError):
    pass
