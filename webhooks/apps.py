from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # Here and not in predictions: predictions only announces that jobs finished
        # (predictions/signals.py) and never imports this app.
        from predictions.signals import job_finished

        job_finished.connect(_make_deliveries, dispatch_uid="webhooks-deliveries")


def _make_deliveries(sender, *, job_ids: list, **kwargs) -> None:
    from webhooks.services import create_deliveries

    create_deliveries(job_ids=job_ids)
