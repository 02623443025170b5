"""The model registry: the models the workers serve, in numbered versions, and what the web
reads of them to route an upload (registry/selectors.py). An app of its own: the web consults
it on every upload, the workers when they start, and neither owns it."""
