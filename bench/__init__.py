"""The benchmark behind `manage.py benchmark` and `make bench` (see docs/performance.md)."""
