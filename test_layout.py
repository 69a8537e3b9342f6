"""Tests of the code's shape, read with `ast` (nothing is imported): short functions, imports that
point one way, and a server that uses only the model's public names."""

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOP_MODULES = ("main.py", "bpe.py", "basics.py", "check_checkpoint.py")
MAX_LINES = 60


def project_files() -> list[Path]:
    """The project's own code: the top-level modules and the package, its tests left out."""
    package = sorted(p for p in (ROOT / "gpt2_llm").rglob("*.py") if "tests" not in p.relative_to(ROOT).parts)
    return [ROOT / name for name in TOP_MODULES] + package


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_name(path: Path, root: Path = ROOT) -> str:
    """gpt2_llm/serve/app.py -> gpt2_llm.serve.app; a package's __init__.py is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---- functions under 60 lines --------------------------------------------------------------------


def is_argument_parser(path: Path, name: str) -> bool:
    """main.py's argument parser is the one place allowed to be long: it lists every flag."""
    return path.name == "main.py" and (name == "build_parser" or (name.startswith("add_") and name.endswith("_parser")))


def long_functions(tree: ast.Module, exempt=lambda name: False) -> list[tuple[int, str, int]]:
    """(line, name, length) of each function over MAX_LINES; a nested one counts in its parent too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not exempt(node.name):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_LINES:
                found.append((node.lineno, node.name, length))
    return sorted(found)


def test_long_functions_are_found():
    # The checker itself: 60 lines pass; 61 fail, the parent of a nested function included.
    body = "\n".join(["    x = 1"] * 59)
    source = f"def short():\n{body}\n\nasync def long():\n    def inner():\n        pass\n{body[:-10]}\n\n"
    source += f"def build_parser():\n{body}\n    x = 2\n"
    tree = ast.parse(source)
    assert long_functions(tree) == [(62, "long", 61), (124, "build_parser", 61)]
    assert long_functions(tree, exempt=lambda name: name == "build_parser") == [(62, "long", 61)]


def test_no_function_over_60_lines():
    found = []
    for path in project_files():
        exempt = functools.partial(is_argument_parser, path)
        found += [f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
                  for line, name, length in long_functions(parse(path), exempt)]  # fmt: skip
    assert not found, f"functions over {MAX_LINES} lines (split them into named phases):\n" + "\n".join(found)


# ---- no import cycle, lazy imports included ------------------------------------------------------


def imported_modules(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The modules of `modules` that `path` imports anywhere in it (inside functions too). An import
    of a package counts as its __init__; `from package import name` counts the submodule `name` when
    there is one, the package otherwise."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: 1 is this module's package, 2 the one above it, ...
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph(files: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules it imports, among `files`."""
    modules = {module_name(path, root) for path in files}
    return {module_name(path, root): imported_modules(path, modules, root) for path in files}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles (a -> b -> ... -> a) that between them pass through every module in an import cycle:
    the shortest through the first such module, then through the first one not named yet, ..."""
    cycles, named = [], set()
    for start in sorted(graph):
        if start not in named and reaches(graph, start, start):
            cycles.append(shortest_cycle(graph, start))
            named.update(cycles[-1])
    return cycles


def reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    """Does a path of one import or more lead from a to b?"""
    seen, todo = set(), [a]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            if nxt == b:
                return True
            seen.add(nxt)
            todo.append(nxt)
    return False


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest path from `start` back to itself (breadth first)."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append(path + [nxt])
    raise AssertionError(f"{start} is in no cycle")


def test_import_graph_and_its_cycles(tmp_path):
    # The checker itself, on a made-up tree: relative imports one and two levels up, a lazy import
    # inside a function, `from package import submodule`, and an import of a package's __init__.
    files = {"pkg/__init__.py": "from .a import x\n",
             "pkg/a.py": "import os\n\ndef f():\n    from . import b\n    import top\n",
             "pkg/b.py": "from pkg import a\n",
             "pkg/sub/__init__.py": "",
             "pkg/sub/c.py": "from ..a import y\nfrom . import not_a_module\nimport pkg\n",
             "top.py": "import pkg.sub.c\n"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph([tmp_path / name for name in files], tmp_path)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b", "top"}, "pkg.b": {"pkg.a"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a", "pkg.sub", "pkg"}, "top": {"pkg.sub.c"}}  # fmt: skip
    assert import_cycles(graph) == [["pkg", "pkg.a", "top", "pkg.sub.c", "pkg"], ["pkg.b", "pkg.a", "pkg.b"]]
    graph["pkg.sub.c"].discard("pkg")
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.sub.c", "pkg.a", "top", "pkg.sub.c"]]
    graph["pkg.a"] = set()
    assert import_cycles(graph) == []


def test_no_import_cycle():
    cycles = import_cycles(import_graph(project_files()))
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" -> ".join(c) for c in cycles)


# ---- the server uses only the model's public names -----------------------------------------------


def private_names(tree: ast.Module, class_name: str) -> set[str]:
    """The names a class keeps private (one leading underscore): its methods, and the attributes it
    sets on itself or in its class body."""
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    assert cls is not None, f"no class {class_name} in the module"
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and ast.unparse(node.value) == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_uses(tree: ast.Module, private: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each use of a name in `private` (as an attribute, or a getattr-style string),
    and of each reach into the model's blocks (`.decoder.h`)."""
    found = []
    for node in ast.walk(tree):
        used = isinstance(node, ast.Attribute) and node.attr in private
        blocks = isinstance(node, ast.Attribute) and node.attr == "h" and getattr(node.value, "attr", None) == "decoder"
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "setattr", "hasattr") and \
                len(node.args) > 1 and isinstance(node.args[1], ast.Constant):  # fmt: skip
            used = node.args[1].value in private
        if used or blocks:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_private_names_and_their_uses_are_found():
    # The checker itself, on a made-up model and a made-up engine.
    model = ast.parse("class GPT2:\n    _cache_size = 4\n    def __init__(self):\n        self._ready = True\n"
                      "        self.public = 1\n    def _prefill(self):\n        pass\n    def step(self):\n"
                      "        pass\n")  # fmt: skip
    private = private_names(model, "GPT2")
    assert private == {"_cache_size", "_ready", "_prefill"}
    engine = ast.parse("def run(model, self):\n    model._prefill()\n    model.step()\n    self._queue = []\n"
                       "    for block in self.model.decoder.h:\n        pass\n    getattr(model, '_ready')\n")  # fmt: skip
    assert private_uses(engine, private) == [(2, "model._prefill"), (5, "self.model.decoder.h"),
                                             (7, "getattr(model, '_ready')")]  # fmt: skip


def test_serve_uses_no_private_model_name():
    private = private_names(parse(ROOT / "gpt2_llm" / "gpt2.py"), "GPT2")
    found = [f"{path.relative_to(ROOT)}:{line} {code}" for path in sorted((ROOT / "gpt2_llm" / "serve").glob("*.py"))
             for line, code in private_uses(parse(path), private)]  # fmt: skip
    assert not found, "serve/ reaches into the model's private parts:\n" + "\n".join(found)
