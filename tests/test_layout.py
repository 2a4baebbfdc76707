"""The package's floors: no module imports one above it (README, "Layout").

Every module of ``hpajax`` has a floor; a module may import modules of its
own floor or below. The report's modules stand beside the floors: they use
the ground and the data floors and no JAX, and only the top floor uses them.
Imports inside functions count too.
"""

import ast
import pathlib

from conftest import REPO

FLOORS = {
    "ground": ["hpajax", "classes", "files", "records", "evaluate", "predictions", "averaging",
               "submission", "display", "config", "data.labels", "data.images", "xla_defaults"],
    "data": ["data", "data.kvstores", "data.store", "data.split", "data.summary", "data.convert",
             "data.sources", "data.pipeline", "data.run_data", "data.dedupe", "synthetic",
             "synthetic.label_model", "synthetic.scene", "synthetic.patterns", "synthetic.render",
             "synthetic.kaggle_files"],
    "math": ["models", "models.layers", "models.seed_cnn", "models.resnet", "models.densenet",
             "models.inception", "models.seresnext", "models.xception", "models.efficientnet",
             "models.convnext", "models.vit", "models.weights",
             "augment", "tta", "losses", "onnx_graph"],
    "steps": ["steps"],
    "run": ["checkpointing", "logs", "preemption", "distributed", "workdir", "inference",
            "exported"],
    "top": ["train", "cv", "ensemble", "commands", "export", "demo", "main"],
}
BESIDE = ["report", "figures", "grids", "model_card"]
LEVEL = {name: level for level, names in enumerate(FLOORS.values()) for name in names}
DATA_LEVEL = list(FLOORS).index("data")
TOP_LEVEL = list(FLOORS).index("top")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO / "hpajax").with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    return name or "hpajax"


def hpajax_imports(path: pathlib.Path) -> set[str]:
    """The hpajax modules a file imports (``from hpajax.data import store`` -> data.store)."""
    modules = {module_name(p) for p in (REPO / "hpajax").rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpajax"):
            base = node.module.removeprefix("hpajax").removeprefix(".") or "hpajax"
            for alias in node.names:
                sub = alias.name if base == "hpajax" else f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("hpajax.") for a in node.names
                      if a.name.startswith("hpajax")}
    return found


def test_every_module_has_a_floor():
    modules = {module_name(p) for p in (REPO / "hpajax").rglob("*.py")}
    assert modules == set(LEVEL) | set(BESIDE)


def test_no_module_imports_one_above_it():
    wrong = []
    for path in sorted((REPO / "hpajax").rglob("*.py")):
        name = module_name(path)
        for used in hpajax_imports(path):
            if name in BESIDE:
                ok = used in BESIDE or LEVEL[used] <= DATA_LEVEL
            elif used in BESIDE:
                ok = LEVEL[name] == TOP_LEVEL
            else:
                ok = LEVEL[used] <= LEVEL[name]
            if not ok:
                wrong.append(f"{name} imports {used}")
    assert not wrong


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from hpajax import train\n    import hpajax.steps\n")
    assert hpajax_imports(source) == {"train", "steps"}


def import_cycles() -> list[list[str]]:
    """Every cycle of imports between hpajax modules, each as the modules around it."""
    graph = {module_name(p): hpajax_imports(p) - {module_name(p)}
             for p in (REPO / "hpajax").rglob("*.py")}
    cycles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):])
            return
        if name in done:
            return
        for used in sorted(graph.get(name, ())):
            visit(used, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return cycles


def test_no_modules_import_each_other():
    """Also not under ``TYPE_CHECKING``: the floors read one way for readers and tools."""
    assert import_cycles() == []
