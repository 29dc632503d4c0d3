"""The rules docs/architecture.md states, checked on the source: they hold by construction,
not by convention. Each test names the file and the import that breaks a rule."""

from __future__ import annotations

import ast
from pathlib import Path

from app.config import PROJECT_ROOT

SERVER = PROJECT_ROOT / "app" / "server"
SHARED = {
    "app.domain",
    "app.server.auth",
    "app.server.errors",
    "app.server.openapi",
    "app.server.params",
    "app.server.ratelimits",  # a handler names the budget it spends (READ_PATH_OPT)
}
SHARED_TYPES = {"app.server.profiles"}  # wire types more than one slice speaks


def imports(path: Path) -> set[str]:
    """Every ``app.*`` module a file imports (``from x import y`` counts as ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "app" or name.startswith("app.")}


def slices() -> list[Path]:
    return sorted(p for p in SERVER.iterdir() if (p / "service.py").is_file())


def test_there_are_slices_each_with_controllers_schemas_and_a_service() -> None:
    names = {p.name for p in slices()}
    assert {"banners", "catalog", "studio"} <= names
    for folder in slices():
        assert (folder / "controllers.py").is_file() and (folder / "schemas.py").is_file()


def test_controllers_import_only_their_own_slice_and_the_shared_modules() -> None:
    broken = []
    for folder in slices():
        own = f"app.server.{folder.name}"
        for path in [folder / "controllers.py", *folder.glob("pages.py")]:
            for name in imports(path):
                if name not in SHARED | SHARED_TYPES and not name.startswith(own + "."):
                    broken.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
    assert not broken, broken


def test_only_services_and_the_composition_root_touch_the_pipeline_and_stores() -> None:
    # The composition root is app.py (one process) and workers.py (the host around several:
    # it migrates the database and starts vLLM before any worker does).
    root = {SERVER / "app.py", SERVER / "workers.py", SERVER / "services.py"}
    allowed = {*root, *(p / "service.py" for p in slices())}
    broken = []
    for path in SERVER.rglob("*.py"):
        if path in allowed:
            continue
        for name in imports(path):
            if name in {"app.pipeline", "app.runtime"} or name.startswith("app.store"):
                broken.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
    assert not broken, broken


def test_the_core_knows_nothing_of_the_http_side() -> None:
    broken = []
    for path in (PROJECT_ROOT / "app").rglob("*.py"):
        if SERVER in path.parents or path.name == "cli.py":  # the CLI's `serve` starts the app
            continue
        broken += [f"{path.name} imports {n}" for n in imports(path) if n.startswith("app.server")]
    assert not broken, broken


def test_constrained_strings_are_declared_once() -> None:
    """A pattern for names, labels, locales or identifiers lives in app/domain.py only."""
    patterns = ("[a-z][a-z0-9_]", "[a-z]{2}(-[A-Z]{2})", r"[\w.:-]", "A-Za-z0-9_.:-")
    broken = []
    for path in [*(PROJECT_ROOT / "app").rglob("*.py"), *(PROJECT_ROOT / "eval").rglob("*.py")]:
        if path == PROJECT_ROOT / "app" / "domain.py":
            continue
        text = path.read_text()
        broken += [f"{path.relative_to(PROJECT_ROOT)}: {p}" for p in patterns if p in text]
    assert not broken, broken


def test_the_publishability_rubric_is_a_leaf_and_the_one_judge_of_copy() -> None:
    """app/rubric.py imports nothing of the project (a training loop, the guards and the eval
    each use it alone, and it cannot reach a model or a store), and no other module keeps its
    own list of call-to-action verbs or tired phrases."""
    rubric = PROJECT_ROOT / "app" / "rubric.py"
    assert not imports(rubric), imports(rubric)
    broken = []
    for path in [*(PROJECT_ROOT / "app").rglob("*.py"), *(PROJECT_ROOT / "eval").rglob("*.py")]:
        if path == rubric:
            continue
        strings = {
            node.value
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        broken += [
            f"{path.relative_to(PROJECT_ROOT)}: '{marker}'"
            for marker in ("gear up", "stock up", "a new page in", "elevate your")
            if marker in strings
        ]
    assert not broken, broken


def test_serving_never_imports_the_training_side() -> None:
    """app/training (peft, trl, datasets, the house-style set) is reached from the CLI only:
    the server, the pipeline and the jobs stay what they were whether a model is trained or
    not, and what they need of a trained folder (its gate, its prompts) is app/models.py's."""
    training = PROJECT_ROOT / "app" / "training"
    broken = []
    for path in (PROJECT_ROOT / "app").rglob("*.py"):
        if training in path.parents or path.name == "cli.py":
            continue
        broken += [
            f"{path.name} imports {n}" for n in imports(path) if n.startswith("app.training")
        ]
    assert not broken, broken
    for path in training.rglob("*.py"):
        assert not any(n.startswith("app.server") for n in imports(path)), path.name
