"""`latentserve bench layout`: the shape of the code. Import cycles among the project's own modules
(imports inside functions count too) and lines of Python per top-level folder (generated stubs apart)."""
import ast
from pathlib import Path

PACKAGES = ("latentserve", "training", "export", "serving", "benchmarks", "tests")
GENERATED = "latentserve/v1"  # protoc's stubs


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for the project's own Python files (not the generated stubs)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if not path.relative_to(root).as_posix().startswith(GENERATED):
                parts = path.relative_to(root).with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from a import b` counts `a.b` where b is a module)."""
    found = modules(root)
    graph = {name: set() for name in found}
    for name, path in found.items():
        for node in ast.walk(_parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {target for target in targets if target in found and target != name}
    return graph


def _parse(source: str) -> ast.Module:
    """ast.parse, once more on CPython 3.11's spurious "AST constructor recursion depth mismatch"
    (python/cpython gh-106905: its AST conversion's recursion counter can be left off by an earlier
    failure or another thread; seen once in `make test`, among the gateway's threads)."""
    try:
        return ast.parse(source)
    except SystemError:
        return ast.parse(source)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, directly or round a loop (Tarjan's strongly
    connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def lines_per_folder(root: Path) -> dict[str, int]:
    counts = {package: 0 for package in PACKAGES}
    for name, path in modules(root).items():
        counts[name.split(".")[0]] += len(path.read_text().splitlines())
    return counts


def main(root: Path) -> None:
    groups = cycles(import_graph(root))
    print(f"import cycles: {len(groups)}")
    for group in groups:
        print(f"  {len(group)} modules: {', '.join(group)}")
    print("lines of Python per folder:")
    for folder, count in lines_per_folder(root).items():
        print(f"  {folder:12} {count:6,}")
