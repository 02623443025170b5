"""The ground floor every app stands on: image checks and decoding, limits, the error shape,
metrics, logging, client addresses, readings kept a few seconds, held requests and their
notifications. It imports nothing of the project above it (pyproject.toml's contracts)."""
