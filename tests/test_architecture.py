"""The layering of ``src/kerasopt``, checked on its import statements (module level and
inside functions alike):

    0  backend, validation, specs, serialization, kernels.layout, files, _install
    1  schedules, variable, pipeline, algorithms, kernels._numba
    2  config, sparse, kernels (scalars, fused, cuda)
    3  engine
    4  the frontends: optimizer, optimizers, loss_scale, torch (+ _torch_plan), optax, keras
    5  serialization_api, checkpoint, interop, cli, the package itself

A module imports only from its own layer or below, and no chain of imports leads back to
where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "kerasopt"

LAYERS = [
    ("backend", "validation", "specs", "serialization", "kernels.layout", "files",
     "_install"),
    ("schedules", "variable", "pipeline", "algorithms", "kernels._numba"),
    ("config", "sparse", "kernels"),
    ("engine",),
    ("optimizer", "optimizers", "loss_scale", "_torch_plan", "torch", "optax", "keras"),
    ("serialization_api", "checkpoint", "interop", "cli", "__main__", ""),
]


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _layer(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name and module.startswith(name + ".")) or (
                    name == "" and module == ""):
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    assert best is not None, f"kerasopt.{module} is in no layer of test_architecture.py"
    return best[0]


def _is_module(name: str) -> bool:
    target = SRC / Path(*name.split(".")) if name else SRC
    return target.with_suffix(".py").exists() or (target / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The kerasopt modules ``path`` imports: ``from kerasopt.x import y`` depends on
    ``x.y`` when that is a module, else on ``x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "kerasopt" and not node.module.startswith("kerasopt."):
                continue
            package = node.module.removeprefix("kerasopt").lstrip(".")
            for alias in node.names:
                child = f"{package}.{alias.name}".lstrip(".")
                found.add(child if _is_module(child) else package)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kerasopt" or alias.name.startswith("kerasopt."):
                    found.add(alias.name.removeprefix("kerasopt").lstrip("."))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {_module(p): _imports(p) for p in SRC.rglob("*.py")}
    for module, deps in graph.items():
        deps.discard(module)
    return graph


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, deps in _graph().items():
        for dep in deps:
            if _layer(dep) > _layer(module):
                wrong.append(f"kerasopt.{module} (layer {_layer(module)}) imports "
                             f"kerasopt.{dep} (layer {_layer(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layers_see_every_module():
    for module in _graph():
        _layer(module)


def test_the_documented_adamw_diff_is_the_adamw_module():
    """docs/architecture.md shows AdamW's whole diff: the block is the module's code."""
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    block = page.split("<!-- no-run -->\n```python\n", 1)[1].split("```", 1)[0]
    module = (SRC / "algorithms" / "adamw.py").read_text()
    code = module.split('"""', 2)[2].split("from __future__ import annotations\n", 1)[1]
    assert block.strip() == code.strip()
