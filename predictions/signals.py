"""What predictions tells the apps above it, which it does not import (webhooks)."""

from django.dispatch import Signal

# Sent once per job and attempt that reached a status of Job.FINISHED, by the transition
# that made it so, inside its transaction (if any): job_ids, the jobs that finished. A
# receiver defers what must not happen unless the transition commits to on_commit.
job_finished = Signal()
