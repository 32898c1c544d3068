"""The architecture's rules, checked on the source: dvc.yaml lists exactly the modules a stage runs, the
package has no import circle, and nothing outside the tasks package asks which task it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from builders import REPO
from pipeline.methods.registry import METHODS
from pipeline.tasks.registry import TASKS

PACKAGES = ("stages", "pipeline")  # the project's own code; everything else is a library


def module_file(name: str) -> Path | None:
    """The file of a project module (`pipeline.tasks` -> pipeline/tasks/__init__.py), None for libraries."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path) -> set[str]:
    """The project modules a file imports, at any depth of its code (imports inside functions count: they
    run when the function does)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pipeline import data`
    found = set()
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # a submodule's import runs its packages' __init__ too
            if module_file(".".join(parts[:depth])):
                found.add(".".join(parts[:depth]))
    return found


def import_closure(file: Path) -> set[Path]:
    seen, todo = {file}, [file]
    while todo:
        for name in imported_modules(todo.pop()):
            path = module_file(name)
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_depends_on_every_module_it_imports(stage: str) -> None:
    spec = stages()[stage]
    deps = [REPO / str(dep).split()[0] for dep in spec["deps"]]
    entry = REPO / "stages" / f"{stage}.py"
    assert f"python -m stages.{stage}" in spec["cmd"]
    missing = sorted(
        str(path.relative_to(REPO))
        for path in import_closure(entry)
        if path.name != "__init__.py" or path.parent.name != "stages"  # an empty namespace marker
        if not any(path == dep or dep in path.parents for dep in deps)
    )
    assert not missing, f"dvc.yaml: stage {stage} runs {missing} but does not list them as deps"


# Stages that list more code than they import, and why: everything else lists exactly its imports, so that
# a change to code a stage does not run leaves that stage (and its outputs, a trained model) as it is.
WHOLE_PACKAGE = {"evaluate": "the registered model carries the whole pipeline package as its code"}


def code_files(dep: Path) -> set[Path]:
    """The project's Python files a dvc.yaml dependency covers (a file, or every file below a folder)."""
    if dep.is_file():
        return {dep} if dep.suffix == ".py" else set()
    return {p for p in dep.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("stage", [s for s in stages() if s not in WHOLE_PACKAGE])
def test_each_stage_lists_no_code_it_does_not_run(stage: str) -> None:
    deps = [REPO / str(dep).split()[0] for dep in stages()[stage]["deps"]]
    closure = import_closure(REPO / "stages" / f"{stage}.py")
    extra = sorted(
        str(file.relative_to(REPO))
        for dep in deps
        if dep.parts[len(REPO.parts)] in PACKAGES
        for file in code_files(dep)
    )
    extra = [file for file in extra if REPO / file not in closure]
    assert not extra, f"dvc.yaml: stage {stage} lists {extra}, which it never imports: a change there re-runs it"


EVALUATION_CODE = {
    "pipeline/evaluation/statistics.py",
    "stages/report.py",
    "stages/evaluate.py",
    "pipeline/tasks/scoring.py",
}


def evaluation_code(file: str) -> bool:
    """Code that scores or reports a model: the metrics and bootstrap module, the evaluate and report stages,
    and every task's scoring role (test metrics, baselines, prompting baselines)."""
    return (
        file in EVALUATION_CODE
        or file.startswith("pipeline/evaluation/")
        or (file.startswith("pipeline/tasks/") and file.endswith("/scoring.py"))
    )


def test_training_and_the_stages_before_it_run_no_evaluation_or_report_code() -> None:
    for stage in ("ingest", "split", "tokenize", "finetune", "export"):
        closure = {str(p.relative_to(REPO)) for p in import_closure(REPO / "stages" / f"{stage}.py")}
        assert not {file for file in closure if evaluation_code(file)}, stage


@pytest.mark.parametrize(("stage", "role"), [("ingest", "reading"), ("split", "reading"), ("tokenize", "encoding")])
def test_the_data_stages_run_only_their_own_role_of_each_task(stage: str, role: str) -> None:
    """ingest and split read rows, tokenize encodes: no task's training, prediction or scoring code is in
    their closure, so a change there leaves the data as it is."""
    closure = {str(p.relative_to(REPO)) for p in import_closure(REPO / "stages" / f"{stage}.py")}
    roles = {"reading", "encoding", "training", "prediction", "scoring"} - {role}
    assert not {f for f in closure if f.startswith("pipeline/tasks/") and Path(f).stem in roles}, stage


def test_every_role_registry_has_every_task_each_a_subclass_of_its_spec() -> None:
    """A task is complete in every role, and each role object carries its task's own names and metrics."""
    from pipeline.tasks.encoding import ENCODERS
    from pipeline.tasks.prediction import PREDICTIONS
    from pipeline.tasks.reading import READERS
    from pipeline.tasks.scoring import SCORINGS
    from pipeline.tasks.training import HOOKS

    for registry in (READERS, ENCODERS, HOOKS, PREDICTIONS, SCORINGS):
        assert list(registry) == list(TASKS)
        for name, role in registry.items():
            assert isinstance(role, type(TASKS[name])), (name, type(role).__name__)


def module_name(file: Path) -> str:
    parts = list(file.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph (module -> modules it imports): its strongly connected components of
    more than one module, or of one that imports itself (Tarjan's algorithm; the standard library has none)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circles() -> None:
    """Imports inside functions count (they run when the function does), and so does a package's
    __init__, which every import of one of its modules runs."""
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    graph = {module_name(file): imported_modules(file) - {module_name(file)} for file in files}
    assert not circles(graph), "import circles: " + "; ".join(" <-> ".join(c) for c in circles(graph))


def test_the_circle_check_finds_a_circle_of_three_and_a_package_that_imports_its_module() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # `from pipeline.tasks.base import X` runs pipeline/tasks/__init__.py: the walk sees the package too.
    assert "pipeline.tasks" in imported_modules(REPO / "pipeline" / "tasks" / "classification" / "spec.py")


def test_the_closure_walk_follows_from_imports_inside_functions(tmp_path: Path) -> None:
    """The rule above is only as good as the walk: finetune reaches the tasks through the training module."""
    closure = {str(p.relative_to(REPO)) for p in import_closure(REPO / "stages" / "finetune.py")}
    assert {
        "pipeline/training/trainer.py",
        "pipeline/tasks/base.py",
        "pipeline/tasks/tokens/training.py",
        "pipeline/tasks/training.py",
        "pipeline/data/encoding.py",
        "pipeline/card.py",
        "pipeline/training/checkpoints.py",
    } <= closure
    assert "stages/evaluate.py" not in closure


def project_sources() -> list[Path]:
    files = [p for package in ("stages", "pipeline", "benchmarks") for p in (REPO / package).rglob("*.py")]
    return [p for p in files if "tasks" not in p.relative_to(REPO).parts[:2]]


def test_no_task_name_comparison_or_task_isinstance_outside_the_tasks_package() -> None:
    """Everything that differs by task lives in pipeline/tasks: elsewhere a task name never appears as a
    literal (no `task == "..."`, no dict keyed by task names) and no isinstance asks for a task class."""
    task_classes = {type(task).__name__ for task in TASKS.values()} | {"Task", "TextClassification"}
    offences = []
    for file in project_sources():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in TASKS:
                offences.append(f"{file.relative_to(REPO)}:{node.lineno}: task name {node.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
                if named & task_classes:
                    offences.append(f"{file.relative_to(REPO)}:{node.lineno}: isinstance on a task class")
    assert not offences, "\n".join(offences)


def method_name_comparisons(tree: ast.AST) -> list[int]:
    """Lines that compare something with a method's name, or test membership in literals holding one."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            constants = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
            if set(constants) & set(METHODS):
                lines.append(node.lineno)
    return lines


def test_no_method_name_comparison_outside_the_methods_package() -> None:
    """What differs by method lives in its class (pipeline/methods): elsewhere code asks the method."""
    offences = [
        f"{file.relative_to(REPO)}:{line}"
        for file in [p for package in ("stages", "pipeline") for p in (REPO / package).rglob("*.py")]
        if "methods" not in file.relative_to(REPO).parts[:2]
        for line in method_name_comparisons(ast.parse(file.read_text(encoding="utf-8")))
    ]
    assert not offences, "method name compared outside pipeline/methods: " + ", ".join(offences)


def test_every_method_is_a_subclass_of_its_spec_and_owns_the_section_of_its_name() -> None:
    """Params validation reads the specs (no method code); training the classes, which agree with them; a
    method with params owns the section `finetune.<name>`, and no section belongs to no method."""
    from pipeline.methods.specs import METHOD_SPECS
    from pipeline.schema import FinetuneParams

    assert list(METHODS) == list(METHOD_SPECS)
    for name, method in METHODS.items():
        assert isinstance(method, type(METHOD_SPECS[name])), name
        if method.section is not None:
            assert FinetuneParams.model_fields[name].annotation is method.section, name
    owned = {spec.section for spec in METHOD_SPECS.values()}
    sections = {f.annotation for f in FinetuneParams.model_fields.values() if f.annotation in owned | {None}}
    assert sections == owned - {None}


def test_params_validation_runs_no_method_code() -> None:
    closure = {str(p.relative_to(REPO)) for p in import_closure(REPO / "pipeline" / "params.py")}
    assert {f for f in closure if f.startswith("pipeline/methods/")} == {
        "pipeline/methods/__init__.py",
        "pipeline/methods/specs.py",
    }


def test_the_method_rule_sees_the_comparisons_the_code_had() -> None:
    tree = ast.parse('ok = params.method != "adalora"\nif params.method in ("lora", "ia3"):\n    pass\n')
    assert method_name_comparisons(tree) == [1, 2]


def test_the_rule_above_sees_a_comparison(tmp_path: Path) -> None:
    """The check is not vacuous: the literal it looks for is found in code like the old stages had."""
    tree = ast.parse('if params.task == "token_classification":\n    pass\n')
    assert any(isinstance(n, ast.Constant) and n.value in TASKS for n in ast.walk(tree))
    assert len(project_sources()) > 20


def test_every_stage_declares_what_it_writes() -> None:
    declared = {
        stage: [
            str(next(iter(o))) if isinstance(o, dict) else str(o)
            for kind in ("outs", "metrics")
            for o in spec.get(kind, [])
        ]
        for stage, spec in stages().items()
    }
    assert all(declared.values()), declared
    assert {"reports/report.md", "reports/figures"} <= set(declared["report"])
    assert {"reports/eval/metrics.json", "reports/eval/baseline.json"} <= set(declared["evaluate"])


def test_stages_holds_only_the_dvc_stage_entry_points() -> None:
    modules = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(stages())


def test_the_library_never_imports_a_stage() -> None:
    """Registered models carry the pipeline package alone: it must not reach into stages/."""
    for file in (REPO / "pipeline").rglob("*.py"):
        assert not {m for m in imported_modules(file) if m.split(".")[0] == "stages"}, file


TESTS = REPO / "tests"
TEST_FOLDERS = {"unit", "tasks", "stages", "serving", "e2e"}


def top_level_imports(file: Path) -> set[str]:
    """The first names of the modules a file imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_test_modules_import_builders_and_helpers_never_another_test_module_or_conftest() -> None:
    modules = sorted(TESTS.rglob("test_*.py"))
    assert len(modules) > 20  # the rule looks where the tests are
    offenders = {
        str(file.relative_to(TESTS)): sorted(name for name in top_level_imports(file) if name.startswith("test_"))
        + sorted({"conftest"} & top_level_imports(file))
        for file in modules
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def test_tests_live_in_the_folders_that_mirror_the_product_and_nowhere_else() -> None:
    assert not list(TESTS.glob("test_*.py"))  # none loose at the top
    assert {file.parent.name for file in TESTS.rglob("test_*.py")} == TEST_FOLDERS
