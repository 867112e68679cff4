"""No product package imports the demo: only the CLI commands that start it do, inside the command function, so
the product runs, installs and imports without it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "ml", "feedback", "rewards", "trainers", "serving", "api")
COMMANDS = {("api/cli.py", "demo"), ("api/cli_training.py", "model_bootstrap")}


def demo_importers(path: Path) -> list[str | None]:
    """The function around each import of `demo` in the file (None: at module level, or in a class body)."""
    found: list[str | None] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                if any(alias.name.split(".")[0] == "demo" for alias in child.names):
                    found.append(function)
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and (child.module or "").split(".")[0] == "demo":
                    found.append(function)
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            visit(child, None if isinstance(child, ast.ClassDef) else inner)

    visit(ast.parse(path.read_text(), str(path)), None)
    return found


def test_only_the_commands_that_start_the_demo_import_it() -> None:
    importers = set()
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            importers.update((path.relative_to(ROOT).as_posix(), f) for f in demo_importers(path))
    assert importers == COMMANDS
