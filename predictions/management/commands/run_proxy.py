"""The front door: render stack/nginx.conf from the app's settings and limits, then become
nginx (exec, so a supervisor watches and signals nginx itself)."""

import os
import pwd
import shutil
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.template import Context, Engine

from common import request_ids
from common.errors import RETRY_AFTER_SECONDS
from common.limits import CLIENT_IDLE_SECONDS, WAIT_MAX_SECONDS
from stack.common import ROOT, SERVICE_USER

TEMPLATE = ROOT / "stack" / "nginx.conf"
# A held answer or an event stream lasts up to WAIT_MAX_SECONDS; the stream sends a
# comment every 10 s. nginx waits this much longer before it gives up on one.
HELD_READ_SLACK_SECONDS = 30


def render(*, listen: str, app: str, held: str, directory: Path, access_log: str) -> str:
    values = {
        "listen": listen,
        "app": app,
        "held": held,
        "dir": directory,
        "access_log": access_log,
        # Only root can switch users; nginx ignores `user` otherwise, with a warning.
        "user": SERVICE_USER if os.geteuid() == 0 else "",
        "request_max_bytes": settings.REQUEST_MAX_BYTES,
        "client_idle_seconds": CLIENT_IDLE_SECONDS,
        "held_read_timeout": WAIT_MAX_SECONDS + HELD_READ_SLACK_SECONDS,
        "retry_after_seconds": RETRY_AFTER_SECONDS,
        "request_id_pattern": request_ids.ACCEPTED.pattern,
    }
    return Engine(autoescape=False).from_string(TEMPLATE.read_text()).render(Context(values))


class Command(BaseCommand):
    help = "Run nginx in front of the web's processes, with a config rendered from the settings."

    def add_arguments(self, parser):
        parser.add_argument("--listen", required=True, help="host:port nginx listens on")
        parser.add_argument("--app", required=True, help="host:port of gunicorn")
        parser.add_argument(
            "--held",
            default="",
            help="host:port of the held-requests process (default: --app, which then holds them)",
        )
        parser.add_argument(
            "--dir",
            dest="directory",
            required=True,
            type=Path,
            help="folder for the config, pid and temp files",
        )
        parser.add_argument(
            "--access-log", default="", help="access log file (default: <dir>/access.log)"
        )

    def handle(self, *args, listen, app, held, directory, access_log, **options):
        nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if nginx is None:
            raise CommandError("nginx is not installed (make install installs it)")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise CommandError(
                    f"the user {SERVICE_USER} does not exist (make install creates it)"
                ) from None
        directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        # nginx's workers (the service user, under root) write request bodies in here.
        directory.chmod(0o755)
        conf = directory / "nginx.conf"
        conf.write_text(
            render(
                listen=listen,
                app=app,
                held=held or app,
                directory=directory,
                access_log=access_log or str(directory / "access.log"),
            )
        )
        self.stdout.write(f"run_proxy: {listen} -> app {app}, held {held or app}; config {conf}")
        self.stdout.flush()
        # -e: errors before the config is read go to stderr too, not to a system log file.
        os.execv(nginx, [nginx, "-e", "stderr", "-p", str(directory), "-c", str(conf)])
