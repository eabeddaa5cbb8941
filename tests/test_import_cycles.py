"""The import graph inside ``multibox`` is acyclic and goes down the layers of ARCHITECTURE.md.

Every ``import`` statement counts, at module level or inside a function. Importing ``multibox.a.b`` also runs the
``__init__`` of ``multibox`` and ``multibox.a``; those implicit parent imports are not edges (else every module
would depend on the public API at the top), but a package's ``__init__`` importing its own submodules is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: The layers, lowest first: a module may import its own layer and the ones below, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",  # plain values and helpers with no detector concept above them
        (
            "multibox.user_input",
            "multibox.cli_errors",
            "multibox.structures",
            "multibox.boxes",
            "multibox.weights.rename",  # the key renamer: backbone modules load ImageNet weights with it
            "multibox.preprocess",
            "multibox.config",
            "multibox.config_checks",
            "multibox.memory",
            "multibox.io",
            "multibox.io.integrity",
            "multibox.io.pillow_open",
            "multibox.io.regular",
            "multibox.io.pillow_open",
            "multibox.viz",
            "multibox.files",
        ),
    ),
    (
        "detection core",  # the SSD's math: default boxes, matching, loss, NMS, post-processing, metrics
        (
            "multibox.priors",
            "multibox.matching",
            "multibox.loss",
            "multibox.nms",
            "multibox.postprocess",
            "multibox.metrics",
            "multibox.metrics._inputs",
            "multibox.metrics.coco",
            "multibox.metrics.confusion",
            "multibox.metrics.plot",
            "multibox.metrics.voc",
        ),
    ),
    (
        "data and networks",
        (
            "multibox.data",
            "multibox.data.anchors",
            "multibox.data.checks",
            "multibox.data.formats",
            "multibox.data.coco",
            "multibox.data.coco_json",
            "multibox.data.combine",
            "multibox.data.holdout",
            "multibox.data.image_io",
            "multibox.data.loader",
            "multibox.data.photometric",
            "multibox.data.pipelines",
            "multibox.data.prior_fit",
            "multibox.data.shapes",
            "multibox.data.sources",
            "multibox.data.transforms",
            "multibox.data.validate",
            "multibox.data.voc",
            "multibox.data.records",
            "multibox.data.yolo",
            "multibox.data.zoom_crop",
            "multibox.models",
            "multibox.models.efficientnet_lite",
            "multibox.models.fuse",
            "multibox.models.fuse_int8",
            "multibox.models.heads",
            "multibox.models.mobilenet",
            "multibox.models.quantize",
            "multibox.models.resnet",
            "multibox.models.ssd",
            "multibox.models.ssdlite_efficientnet",
            "multibox.models.tiny",
            "multibox.models.vgg",
            "multibox.models.zoo",
        ),
    ),
    (
        "weights",  # checkpoints and weight files: reading, writing, converting
        (
            "multibox.weights",
            "multibox.weights.checkpoint",
            "multibox.weights.convert",
            "multibox.weights.imagenet",
            "multibox.weights.io",
            "multibox.weights.ssd_pytorch",
            "multibox.weights.torchvision",
        ),
    ),
    ("runtime", ("multibox.runtime",)),  # a trained model made into a fast runner
    (
        "export",  # ONNX graphs and the onnxruntime detector; the public API imports export_onnx
        ("multibox", "multibox.export", "multibox.export_graph", "multibox.onnx_runtime"),
    ),
    (
        "engine",  # training, evaluation, detection, benchmarks, reports
        (
            "multibox.engine",
            "multibox.engine.bench",
            "multibox.engine.builders",
            "multibox.engine.demo",
            "multibox.engine.evaluate",
            "multibox.engine.hooks",
            "multibox.engine.inference",
            "multibox.engine.lock",
            "multibox.engine.rng",
            "multibox.engine.owndata",
            "multibox.engine.report",
            "multibox.engine.run",
            "multibox.engine.sampling",
            "multibox.engine.schedule",
            "multibox.engine.train",
            "multibox.engine.trainer",
            "multibox.engine.video",
            "multibox.report.*",
        ),
    ),
    ("applications", ("multibox.cli", "multibox.cli_parser", "multibox.__main__", "multibox.serve.*")),
)
"""A name ending in ``.*`` is a package and every module in it; other names are exactly one module. Names of
modules that do not exist (yet) are allowed."""


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module under src/multibox: dotted name -> (file, is a package's ``__init__``)."""
    found = {}
    for path in sorted((SRC / "multibox").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imported(name: str, path: Path, is_package: bool, modules: set[str]) -> set[str]:
    """The ``multibox`` modules that ``name`` imports anywhere in its file."""
    package = name if is_package else name.rpartition(".")[0]
    wanted: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import x
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # from pkg import submodule imports the submodule, else a name of pkg
                full = f"{source}.{alias.name}"
                wanted.add(full if full in modules else source)
    out = set()
    for target in wanted:
        while target and target not in modules:  # import multibox.a.b.name -> the module multibox.a.b
            target = target.rpartition(".")[0]
        if target.startswith("multibox") and target != name:
            out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, pkg, set(modules)) for name, (path, pkg) in modules.items()}


def _layer_of(name: str) -> int | None:
    for rank, (_, members) in enumerate(LAYERS):
        if name in members:
            return rank
    for rank, (_, members) in enumerate(LAYERS):
        if any(m.endswith(".*") and (name == m[:-2] or name.startswith(m[:-1])) for m in members):
            return rank
    return None


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None; depth-first search with three colours."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "multibox" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from multibox.sub import b\n    import multibox.sub.c as c\n")
    (pkg / "b.py").write_text("from .. import sub\n")
    modules = {"multibox", "multibox.sub", "multibox.sub.a", "multibox.sub.b", "multibox.sub.c"}
    assert _imported("multibox.sub", pkg / "__init__.py", True, modules) == {"multibox.sub.a"}
    assert _imported("multibox.sub.a", pkg / "a.py", False, modules) == {"multibox.sub.b", "multibox.sub.c"}
    assert _imported("multibox.sub.b", pkg / "b.py", False, modules) == {"multibox.sub"}


def test_find_cycle_on_small_graphs():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]


def test_layer_lookup():
    assert _layer_of("multibox.boxes") == 0
    assert _layer_of("multibox.serve.app") == _layer_of("multibox.serve") == _layer_of("multibox.cli")
    assert _layer_of("multibox.engine.something_new") is None  # a new module must be placed explicitly
    assert _layer_of("multibox.servers") is None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer():
    missing = sorted(name for name in _modules() if _layer_of(name) is None)
    assert not missing, f"modules without a layer in LAYERS (tests/test_import_cycles.py): {missing}"


def test_imports_go_down_the_layers():
    upward = []
    for name, targets in sorted(_graph().items()):
        own = _layer_of(name)
        if own is None:
            continue
        for target in sorted(targets):
            other = _layer_of(target)
            if other is not None and other > own:
                upward.append(f"{name} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
