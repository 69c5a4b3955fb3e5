"""The repository's layering: which module may import which, and the rules every module keeps.

Each module imports only modules below it in LAYERS (a package's own modules may import each
other), so there is no import cycle to break with an import inside a function; no module edits
sys.path (the entry points are `python -m ...` and pytest's pythonpath); and every module that
imports Keras or TensorFlow imports tfenv before them, since TensorFlow reads its settings when it
loads (tfenv.py).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. htd's schedules are a library below settings; `python -m htd` is a command above the loop.
LAYERS = ("errors", "tfenv", "runlock", "patches", "data", "numpy_pipeline", "htd", "models", "distribute", "fused", "padded",
          "settings", "runfolder", "inference", "execution", "loop", "series", "train", "ensemble", "tricks",
          "htd.__main__", "bench", "results")


def project_files():
    return sorted(p for p in ROOT.rglob("*.py")
                  if not {".venv", "tests", ".git"} & set(p.relative_to(ROOT).parts[:1]))


def layer_of(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts == ("htd", "__main__"):
        return "htd.__main__"
    return parts[0]


def imported(tree):
    """(line, top-level module name) of every absolute import in `tree`, those inside functions too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module


def layering_problems(path, text=None):
    here = layer_of(path)
    problems = []
    for line, name in imported(ast.parse(text or path.read_text())):
        top = "htd.__main__" if name == "htd.__main__" else name.split(".")[0]
        if top not in LAYERS or top == here:  # not the project's, or the module's own package
            continue
        if LAYERS.index(top) >= LAYERS.index(here):
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}, which is not below {here}")
    return problems


def tfenv_problems(path, text=None):
    """Keras or TensorFlow imported at the top of a module before tfenv (or without it). A package's
    modules load after its __init__.py, so one that imports tfenv first covers them."""
    package = path.parent / "__init__.py"
    seen_tfenv = (path.name != "__init__.py" and package.is_file() and "tfenv" in
                  {a.name for node in ast.parse(package.read_text()).body if isinstance(node, ast.Import)
                   for a in node.names} and not tfenv_problems(package))
    for node in ast.parse(text or path.read_text()).body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if "tfenv" in names:
            seen_tfenv = True
        if any(n.split(".")[0] in ("keras", "tensorflow") for n in names) and not seen_tfenv:
            return [f"{path.relative_to(ROOT)}:{node.lineno} imports {names[0]} before tfenv"]
    return []


def sys_path_problems(path, text=None):
    return [f"{path.relative_to(ROOT)}:{node.lineno} changes sys.path" for node in ast.walk(ast.parse(text or path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys"]


def test_every_module_imports_only_modules_below_it():
    assert set(map(layer_of, project_files())) <= set(LAYERS), "a new top-level module needs its place in LAYERS"
    problems = [p for path in project_files() for p in layering_problems(path)]
    assert not problems, "\n".join(problems)


def test_keras_and_tensorflow_come_after_tfenv():
    problems = [p for path in project_files() for p in tfenv_problems(path)]
    assert not problems, "\n".join(problems)


def test_no_module_or_test_edits_sys_path():
    files = [*project_files(), *sorted((ROOT / "tests").glob("*.py"))]
    problems = [p for path in files for p in sys_path_problems(path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("where, source, check", [
    ("data.py", "import loop\n", layering_problems),
    ("runfolder.py", "def f():\n    import train\n", layering_problems),  # inside a function counts too
    ("settings.py", "import keras\nimport tfenv\n", tfenv_problems),
    ("bench/x.py", "import sys\nsys.path.insert(0, '.')\n", sys_path_problems),
])
def test_each_rule_finds_what_it_forbids(where, source, check):
    assert check(ROOT / where, source)
