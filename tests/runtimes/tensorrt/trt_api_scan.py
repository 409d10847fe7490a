"""Static scan of TensorRT API use, checked against the recorded API surfaces.

Finds every ``trt.<Name>[.<member>...]`` chain, and every ``<var>.<member>`` where ``<var>``
is one of the conventional TensorRT variable names (``_paths.TRT_VARIABLES``), and checks each
against the surface of every TensorRT version whose code path reaches it. The path of a piece
of code is the nearest enclosing ``@trt_path(...)`` tag, else the module's ``TRT_PATH``, else
``"common"``; a tag's versions are those whose surface has all of the tag's features
(``_paths.PATH_FEATURES``), exactly the condition under which the runtime takes that path.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fakes.fake_tensorrt import SUPPORTED_VERSIONS, ApiSurface, load_surface
from trt_provision.runtimes.tensorrt._paths import PATH_FEATURES, TRT_VARIABLES


@dataclass(frozen=True)
class ApiUse:
    file: str
    line: int
    expr: str  # e.g. "trt.BuilderFlag.FP16" or "layer.precision"
    path: tuple[str, ...]  # the surface path checked, e.g. ("ILayer", "precision")
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Violation:
    use: ApiUse
    version: str

    def __str__(self) -> str:
        return (
            f"{self.use.file}:{self.use.line}: {self.use.expr} is not in TensorRT "
            f"{self.version} (code path {'/'.join(self.use.tags)})"
        )


def _tags_of(node: ast.AST) -> tuple[str, ...] | None:
    decorators = getattr(node, "decorator_list", [])
    for dec in decorators:
        if isinstance(dec, ast.Call):
            func = dec.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name == "trt_path":
                return tuple(
                    a.value for a in dec.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                )
    return None


def _module_tags(tree: ast.Module) -> tuple[str, ...]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRT_PATH" for t in stmt.targets
        ):
            value = stmt.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return (value.value,)
            if isinstance(value, ast.Tuple):
                return tuple(
                    e.value for e in value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                )
    return ("common",)


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    parts: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    if isinstance(cur, ast.Name):
        return cur.id, list(reversed(parts))
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, filename: str, module_tags: tuple[str, ...],
                 variables: Mapping[str, str]) -> None:
        self.filename = filename
        self.stack = [module_tags]
        self.variables = variables
        self.uses: list[ApiUse] = []

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        tags = _tags_of(node)
        self.stack.append(tags if tags is not None else self.stack[-1])
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = _scoped
    visit_AsyncFunctionDef = _scoped
    visit_ClassDef = _scoped

    def visit_Attribute(self, node: ast.Attribute) -> None:
        found = _chain(node)
        if found is None:
            self.generic_visit(node)
            return
        root, parts = found
        path: tuple[str, ...] | None = None
        if root == "trt":
            public = []
            for p in parts:
                if p.startswith("__") and p != "__init__":
                    break
                public.append(p)
            path = tuple(public) or None
        elif root in self.variables and not parts[0].startswith("_"):
            path = (self.variables[root], parts[0])
        if path is not None:
            self.uses.append(ApiUse(
                self.filename, node.lineno, ".".join([root, *parts]), path, self.stack[-1]
            ))
            return  # the whole chain is recorded once
        self.generic_visit(node)


def scan_source(source: str, filename: str = "<snippet>",
                variables: Mapping[str, str] = TRT_VARIABLES) -> list[ApiUse]:
    tree = ast.parse(source, filename)
    visitor = _Visitor(filename, _module_tags(tree), variables)
    visitor.visit(tree)
    return visitor.uses


def scan_package(root: Path) -> list[ApiUse]:
    uses: list[ApiUse] = []
    for path in sorted(root.rglob("*.py")):
        uses += scan_source(path.read_text(), str(path.relative_to(root.parent)))
    return uses


def versions_for(tags: Sequence[str], surfaces: Iterable[ApiSurface]) -> list[str]:
    """Versions whose surface offers every feature of every tag (unknown tags: none)."""
    out = []
    for surface in surfaces:
        ok = True
        for tag in tags:
            if tag not in PATH_FEATURES:
                return []
            for owner, member in PATH_FEATURES[tag]:
                if not (surface.has(owner, member) if member else surface.has(owner)):
                    ok = False
        if ok:
            out.append(surface.version)
    return out


def check_uses(uses: Iterable[ApiUse],
               versions: Sequence[str] = SUPPORTED_VERSIONS) -> list[Violation]:
    surfaces = [load_surface(v) for v in versions]
    by_version = {s.version: s for s in surfaces}
    violations = []
    for use in uses:
        unknown = [t for t in use.tags if t not in PATH_FEATURES]
        if unknown:
            violations.append(Violation(use, f"(unknown path tag {unknown})"))
            continue
        for version in versions_for(use.tags, surfaces):
            if not by_version[version].has(*use.path):
                violations.append(Violation(use, version))
    return violations
