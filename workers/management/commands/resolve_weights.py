import contextlib
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from serving.inference import ModelLoadError
from serving.loading import load_served


class Command(BaseCommand):
    help = (
        "Print the MODEL_WEIGHTS the stack should serve: MODEL_WEIGHTS itself when it loads, "
        "else 'random' with the reason on stderr (for `make run` on a machine that cannot "
        "download the ImageNet weights)."
    )

    def handle(self, *args, **options):
        try:
            # Keras reports its download on stdout, which must hold only the answer.
            with contextlib.redirect_stdout(sys.stderr):
                load_served(name=settings.MODEL_NAME, weights=settings.MODEL_WEIGHTS)
        except ModelLoadError as error:
            sys.stderr.write(
                f"\n*** {error}\n*** Starting with MODEL_WEIGHTS=random: every result and the "
                f"upload page will say the predictions are meaningless.\n\n"
            )
            self.stdout.write("random")
            return
        self.stdout.write(settings.MODEL_WEIGHTS)
