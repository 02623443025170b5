from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Predictions"

    def ready(self) -> None:
        from common.metrics import SCRAPE_TIME_REGISTRY
        from predictions.metrics import JobsCollector

        SCRAPE_TIME_REGISTRY.register(JobsCollector())
