"""The direction of dependencies: inference never needs training, and no two modules
lean on each other (including imports inside functions, which hide a cycle from Python
but not from a reader)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gptstore

SRC = Path(gptstore.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """gptstore modules that `path` imports, anywhere in it (a package's `from pkg import
    sub` counts as importing the submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif module in known:
                    found.add(module)
    found.discard(name)
    return found


def test_no_two_modules_import_each_other():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, name, known) for name, path in modules.items()}
    mutual = sorted((a, b) for a, deps in graph.items() for b in deps
                    if a < b and a in graph.get(b, set())
                    # a package's lazy re-export of its own submodule is not a cycle
                    and not b.startswith(a + ".") and not a.startswith(b + "."))
    assert mutual == []


def _loaded_in_a_fresh_process(imports: str, wanted: str) -> list[str]:
    """The modules, among those `wanted` (an expression over a module name `m`), that
    a fresh interpreter holds after `import <imports>`."""
    code = (f"import sys, {imports}; "
            f"print(sorted({{m for m in sys.modules if {wanted}}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return ast.literal_eval(out)  # type: ignore[no-any-return]


def test_inference_imports_nothing_from_training():
    assert _loaded_in_a_fresh_process(
        "gptstore.inference, gptstore.inference.engine, gptstore.inference.loader, "
        "gptstore.inference.store", "m.startswith('gptstore.training')") == []


def test_no_inference_module_names_training():
    modules = _modules()
    known = set(modules)
    offenders = {name: sorted(d for d in _imports(path, name, known)
                              if d.startswith("gptstore.training"))
                 for name, path in modules.items() if name.startswith("gptstore.inference")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cli_starts_without_the_database_layer_torch_or_transformers():
    """Every command pays the CLI's imports; `generate` through a running server pays
    little else (cli/remote.py). SQLAlchemy (~0.15-0.25 s), torch and transformers are
    imported by the commands that use them."""
    assert _loaded_in_a_fresh_process(
        "gptstore.cli.app",
        "m.split('.')[0] in ('sqlalchemy', 'torch', 'transformers')") == []
