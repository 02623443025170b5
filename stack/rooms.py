"""The rooms (top-level packages) and the arrows between them, read from the code's imports.

`.venv/bin/python -m stack.rooms` prints the Mermaid diagram that docs/architecture.md shows;
tests/test_architecture.py checks that the two agree, so the picture cannot drift from the
code. The rooms are import-linter's root packages (pyproject.toml), in the order of its
layers contract, highest first.
"""

import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def layers_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["type"] == "layers")


def rooms() -> list[str]:
    """The rooms in the order of the layers contract, highest first."""
    return [room for layer in layers_contract()["layers"] for room in layer.split(" | ")]


def arrows(names: list[str]) -> list[tuple[str, str]]:
    """Every (importer, imported) pair of rooms with at least one direct import that the
    layers contract does not list as an exception (its ignore_imports, each with a reason)."""
    ignored = {
        tuple(part.strip() for part in line.split("->"))
        for line in layers_contract().get("ignore_imports", [])
    }
    graph = grimp.build_graph(*names, cache_dir=None)
    found = []
    for importer in names:
        for imported in names:
            if importer == imported:
                continue
            imports = graph.find_matching_direct_imports(
                import_expression=f"{importer}.** -> {imported}.**"
            )
            if any((i["importer"], i["imported"]) not in ignored for i in imports):
                found.append((importer, imported))
    return found


def mermaid() -> str:
    lines = ["flowchart TD"]
    lines += [f"    {importer} --> {imported}" for importer, imported in arrows(rooms())]
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid())
