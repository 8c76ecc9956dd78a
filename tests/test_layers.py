"""The package's layering (docs/design.md, "Layers"): every import of a minilvlm module points down
the layer order, peers of one layer do not import each other, no minilvlm import hides inside a
function, and the module graph has no cycle. Also the size rules: no function over 80 lines and
no file over 400, unless the file's docstring opens with a line saying why ("Long file: ...")."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minilvlm"

# The first part of a module's name below `minilvlm` -> its layer. A module may import its own
# part (minilvlm.models.llava -> minilvlm.models.decoder) and any lower layer, never a peer or higher.
LAYERS = {
    "_C": -1, "_emu": -1,   # the compiled extensions (csrc/)
    "ops": 0, "io": 0, "device": 0,
    "models": 1, "optim": 1,
    "weights": 2,
    "data": 3,
    "config": 4,
    "recipes": 5,
    "eval": 6,
    "train": 7, "curation": 7, "export": 7,
    "cli": 8,
}
NATIVE = ("minilvlm._C", "minilvlm._emu")
MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 400


def module_name(path, package=PACKAGE):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path, package=PACKAGE):
    """[(imported module, line, at module level)] of every minilvlm import in a file; `from
    minilvlm.x import y` counts as minilvlm.x.y when y is a module, else as minilvlm.x."""
    tree = ast.parse(path.read_text())
    late = set()   # import nodes inside a function body
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            late.update(id(inner) for inner in ast.walk(node) if inner is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = []
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.append(candidate if _is_module(candidate, package) else node.module)
        else:
            continue
        for name in names:
            if name == "minilvlm" or name.startswith("minilvlm."):
                found.append((name, node.lineno, id(node) not in late))
    return found


def _is_module(name, package):
    if name in NATIVE:   # built or not, these are modules
        return True
    relative = Path(*name.split(".")[1:])
    return (package / relative).with_suffix(".py").is_file() or (package / relative / "__init__.py").is_file()


def package_files(package=PACKAGE):
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def import_graph(package=PACKAGE):
    return {module_name(path, package): imports_of(path, package) for path in package_files(package)}


def layer_violations(graph):
    problems = []
    for module, imports in graph.items():
        mine = part_of(module)
        for target, line, top in imports:
            theirs = part_of(target)
            where = f"{module} line {line} imports {target}"
            if not top:
                problems.append(f"{where} inside a function (imports sit at module level)")
            if mine is None or theirs is None or theirs == mine:
                continue
            if mine not in LAYERS or theirs not in LAYERS:
                problems.append(f"{where}: {mine if mine not in LAYERS else theirs} has no layer in LAYERS")
            elif LAYERS[theirs] >= LAYERS[mine]:
                kind = "a peer" if LAYERS[theirs] == LAYERS[mine] else "a higher layer"
                problems.append(f"{where}: {theirs} is {kind} of {mine}")
    return problems


def find_cycle(graph):
    """One import cycle [a, b, ..., a] among the package's modules, or None."""
    edges = {m: sorted({t for t, _, _ in imports if t in graph and t != m}) for m, imports in graph.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None
    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_imports_point_down_the_layers():
    problems = layer_violations(import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module_name(p)) for p in package_files()} - {None}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_functions_and_files_are_short():
    problems = []
    for path in package_files():
        text = path.read_text()
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        if len(text.splitlines()) > MAX_FILE_LINES and not doc.startswith("Long file:"):
            problems.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not problems, "\n".join(problems)


# ---- the checks themselves catch what they are for -------------------------------------------

def _graph(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "minilvlm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path / "minilvlm")


def test_checks_catch_an_upward_import_a_peer_a_late_import_and_a_cycle(tmp_path):
    graph = _graph(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "",
        "models/a.py": "from minilvlm.train import loop\n",
        "train/__init__.py": "",
        "train/loop.py": "import minilvlm.curation.soup\n\ndef f():\n    from minilvlm.models import a\n",
        "curation/__init__.py": "",
        "curation/soup.py": "",
        "data/__init__.py": "",
        "data/x.py": "from minilvlm.data import y\n",
        "data/y.py": "from minilvlm.data import x\n",
    })
    problems = "\n".join(layer_violations(graph))
    assert "minilvlm.models.a line 1 imports minilvlm.train.loop: train is a higher layer of models" in problems
    assert "imports minilvlm.curation.soup: curation is a peer of train" in problems
    assert "minilvlm.train.loop line 4 imports minilvlm.models.a inside a function" in problems
    assert find_cycle(graph) in (["minilvlm.data.x", "minilvlm.data.y", "minilvlm.data.x"],
                                 ["minilvlm.data.y", "minilvlm.data.x", "minilvlm.data.y"])


@pytest.mark.parametrize("module", ["minilvlm.eval.load", "minilvlm.export", "minilvlm.curation.soup"])
def test_eval_curation_and_export_never_import_train(module):
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in graph:
            continue
        seen.add(current)
        todo.extend(t for t, _, _ in graph[current])
    assert not [m for m in seen if part_of(m) == "train"]
