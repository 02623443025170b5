"""Loading and running a classifier, whatever runs it: the shared input transform and top-k
(inference.py), model packages (package.py) and their export and faithfulness gate
(export.py), which model a process serves (loading.py), and one module per runtime
(runtimes/). Used by the workers, `manage.py predict`, the registry's `models` command and
the benchmark; it knows no Kafka consumer and no Django model."""
