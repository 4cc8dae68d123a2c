"""The layers run one way (command line -> sweep -> engine -> model/data/snapshot -> config; the
report reads files only): no module imports one of a higher layer, at module or function level,
so there is no import cycle."""
import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"
LAYERS = {
    "command line": ["cli", "train", "inspect", "launcher"],
    "sweep": ["sweep", "paths"],
    "engine": ["engine", "optim", "loss", "recorder", "checkpoint", "lock"],
    "model/data/snapshot": ["batched", "model", "sharing", "init", "data", "snapshot", "stats"],
    "config": ["config"],
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def _imports(path: Path):
    """runner modules a file imports (relative or absolute, anywhere in the file)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                yield node.module.split(".")[0]
            elif node.level == 1:
                yield from (a.name for a in node.names)
            elif node.module and node.module.startswith("runner."):
                yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            yield from (a.name.split(".")[1] for a in node.names if a.name.startswith("runner."))


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, rank in RANK.items():
        for imported in _imports(RUNNER / f"{module}.py"):
            if imported in RANK and RANK[imported] < rank:
                wrong.append(f"{module} ({list(LAYERS)[rank]}) imports {imported} ({list(LAYERS)[RANK[imported]]})")
    assert not wrong, wrong
    assert set(RANK) | {"report", "__init__"} == {p.stem for p in RUNNER.glob("*.py")} | {"report"}


def test_the_report_reads_files_only():
    """Every runner module the report package imports, resolved from each file's own package."""
    for path in (RUNNER / "report").rglob("*.py"):
        package = ["runner", *path.relative_to(RUNNER).parent.parts]           # e.g. runner.report.figures
        outside = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner"):
                target = node.module.split(".")
            elif isinstance(node, ast.Import):
                target = next((a.name.split(".") for a in node.names if a.name.startswith(("runner", "torch"))), [])
            else:
                continue
            if target[:1] == ["torch"] or (target[:1] == ["runner"] and target[1:2] != ["report"]):
                outside.add(".".join(target[:2]))
        assert outside <= {"runner.snapshot", "runner.paths"}, (path, outside)   # file layouts and path checks
