"""The inference workers: the Kafka handler that turns request batches into results
(worker.py) and the commands that run and check a served model (run_worker, predict,
ensure_model_package, resolve_weights). The models themselves run in serving/."""
