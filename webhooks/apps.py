from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # Here and not in predictions: predictions only announces that jobs finished
        # (predictions/signals.py) and never imports this app.
        from predictions.signals import job_finished
        from webhooks.services import deliveries_for_finished_jobs

        job_finished.connect(deliveries_for_finished_jobs, dispatch_uid="webhooks-deliveries")
