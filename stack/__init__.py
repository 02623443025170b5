"""The local stack: installs what the project needs and runs MariaDB, Redis, Kafka and the
app processes, with all their state in .stack/ (or STACK_DIR). Standard library only,
because it runs before .venv exists. The command line is stack/stack.py (stack.cli)."""
