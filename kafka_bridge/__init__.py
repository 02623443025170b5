"""The Django side of Kafka: producing inference requests (requests.py) and the result
handler (results.py), both built on kafka_wire. It imports no models and no tasks: the
consume_results command passes the result handler its sinks."""
