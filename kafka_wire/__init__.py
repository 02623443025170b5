"""The Kafka wire library: the message contract, client settings, producing, the consumer
loop and topic admin. It knows neither Django models nor Celery (pyproject.toml's
import-linter contracts); the workers and the result bridge build on it."""
