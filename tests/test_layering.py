"""The house has layers: plumbing < nn < families < plan/recipe/export/api < cli, and no cycles.

The import graph is read statically with `ast`, from top-level and function-level imports
alike (an import inside a function is still a dependency; only `if TYPE_CHECKING:` blocks
are left out, they never run). Nodes are top-level modules or subpackages of torchshrink.
"""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "torchshrink"

# api holds the verbs (apply and friends): it needs only the registry and nn, and the
# families call it (schedules re-apply a method; subpackages are callable verbs).
PLUMBING, NN, VERBS, FAMILY, TOP, CLI = range(6)
RANKS: dict[str, int] = {
    "errors": PLUMBING, "config": PLUMBING, "registry": PLUMBING, "batches": PLUMBING, "distributed": PLUMBING,
    "progress": PLUMBING, "_verb_module": PLUMBING, "_version": PLUMBING, "native": PLUMBING,
    "nn": NN,
    "prune": FAMILY, "quant": FAMILY, "lowrank": FAMILY, "cluster": FAMILY, "distill": FAMILY,
    "codec": FAMILY, "measure": FAMILY, "data": FAMILY, "models": FAMILY, "train": FAMILY,
    "plan": TOP, "infer": TOP, "recipe": TOP, "export": TOP, "api": VERBS, "report": TOP,
    "cli": CLI, "__main__": CLI,
    "": CLI,  # torchshrink/__init__.py: the public API, which only the cli builds on
}

# Known edges that break the layering, each with why it is still here. The coordinator
# deletes an entry when the branch that fixes it merges.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set(KNOWN_VIOLATIONS)

MAX_LINES = 500
# Still to split; an entry that is no longer long fails test_long_file_allowlist_is_needed.
LONG_FILE_ALLOWLIST: set[str] = set()


def _unit(module: str) -> str:
    """'torchshrink.prune.mask' -> 'prune'; 'torchshrink.cli_export' -> 'cli'; root -> ''."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    head = parts[0]
    return "cli" if head.startswith("cli") else head


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _edges() -> dict[tuple[str, str], list[str]]:
    mods = _modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                if t != "torchshrink" and not t.startswith("torchshrink."):
                    continue
                a, b = _unit(name), _unit(t)
                if a != b:
                    edges.setdefault((a, b), []).append(f"{name} imports {t}")
    return edges


def test_every_unit_has_a_rank() -> None:
    units = {_unit(m) for m in _modules()}
    assert units - set(RANKS) == set(), "add new modules to RANKS in tests/test_layering.py"


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad = {e: why for e, why in _edges().items()
           if RANKS[e[1]] > RANKS[e[0]] and e not in KNOWN_VIOLATIONS}
    assert bad == {}


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        if (a, b) not in KNOWN_CYCLE_EDGES:
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return [*stack[stack.index(v):], v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            assert cycle is None, "import cycle: " + " -> ".join(c or "torchshrink" for c in cycle)


def test_known_exceptions_are_still_needed() -> None:
    edges = _edges()
    assert {e for e in KNOWN_VIOLATIONS if e not in edges} == set(), "delete fixed entries from the allowlist"


def test_no_file_over_500_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) - LONG_FILE_ALLOWLIST == set(), long
