"""docs/architecture.md's diagram of rooms and arrows is the one the imports draw."""

import re
from pathlib import Path

from stack import rooms

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_the_documented_diagram_of_rooms_matches_the_imports():
    documented = re.search(r"```mermaid\n(.*?)\n```", DOC.read_text(), re.S).group(1)
    assert documented == rooms.mermaid(), "run .venv/bin/python -m stack.rooms, update the doc"
