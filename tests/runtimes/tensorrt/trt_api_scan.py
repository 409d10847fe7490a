"""Static scan of TensorRT API use, checked against the recorded API surfaces.

What is a TensorRT reference (the *roots*):

* the module: ``trt`` (by convention), a name bound by ``import tensorrt [as t]``, and any
  ``from tensorrt import X`` name;
* the conventional variable names of ``_paths.TRT_VARIABLES`` (``layer`` holds an ``ILayer``);
* an alias: a name assigned exactly once in its function (or module) scope from a TensorRT
  reference (``flags = trt.BuilderFlag``, ``first = network.get_layer(0)``).

From a root the scanner follows attributes and calls: a call of a class is an instance of it, a
call of a method (or module function) is an instance of the class its pybind signature
returns (``get_layer(...) -> trt.ILayer``), so ``network.get_layer(0).precision`` is checked
as ``ILayer.precision``. Where every overload does not name one TensorRT class (``-> int``,
properties, values) the chain is no longer statically known and is not followed.

Each call of a TensorRT method, class or module function is also checked for its argument
count against the recorded signatures: some overload must take that many positional
arguments plus the keyword names given (defaults allowed). Calls with ``*args``/``**kwargs``
are not counted.

``getattr(obj, "NAME")`` and ``setattr(obj, "NAME", value)`` on a TensorRT reference are
checked exactly like ``obj.NAME``. Feature detection is exempt: ``hasattr(obj, "NAME")`` and the
three-argument ``getattr(obj, "NAME", default)`` ask whether the member exists and are never
violations.

The path of a piece of code is the nearest enclosing ``@trt_path(...)`` tag, else the
module's ``TRT_PATH``, else ``"common"``. A tag's versions are those whose surface has all of
the tag's features (``_paths.PATH_FEATURES``), exactly the condition under which the runtime
takes that path. Several tags mean OR: the code may run on either path, so it is checked
against every version any of its tags reaches. A tag the table does not know, an empty
``@trt_path()`` or a non-literal tag is a violation.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fakes.fake_tensorrt import SUPPORTED_VERSIONS, ApiSurface, load_surface
from trt_provision.runtimes.tensorrt._paths import PATH_FEATURES, TRT_VARIABLES

CALL = "()"  # a path step: the value the preceding callable returns
_MODULE = "tensorrt"


@dataclass(frozen=True)
class ApiUse:
    file: str
    line: int
    expr: str  # e.g. "trt.BuilderFlag.FP16", "layer.precision", "network.get_layer(...).name"
    # the surface path checked: names, with CALL for "what the call returns"; e.g.
    # ("INetworkDefinition", CALL, "get_layer", CALL, "precision")
    path: tuple[str, ...]
    tags: tuple[str, ...]
    # for a call: (number of positional arguments, keyword names); None: not a checked call
    call: tuple[int, tuple[str, ...]] | None = None
    # assigned to (``obj.NAME = v`` or ``setattr(obj, "NAME", v)``): must be settable
    store: bool = False


@dataclass(frozen=True)
class Violation:
    use: ApiUse
    version: str
    reason: str = ""

    def __str__(self) -> str:
        where = f"{self.use.file}:{self.use.line}: {self.use.expr}"
        tags = "/".join(self.use.tags) or "(none)"
        if self.reason:
            return f"{where}: {self.reason} in TensorRT {self.version} (code path {tags})"
        return f"{where} is not in TensorRT {self.version} (code path {tags})"


# --------------------------------------------------------------------------- tags


def _literal_tags(args: Sequence[ast.expr]) -> tuple[str, ...]:
    tags = []
    for a in args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            tags.append(a.value)
        else:
            tags.append("<not a literal>")
    return tuple(tags)


def _tags_of(node: ast.AST) -> tuple[str, ...] | None:
    for dec in getattr(node, "decorator_list", []):
        if isinstance(dec, ast.Call):
            func = dec.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name == "trt_path":
                return _literal_tags(dec.args)
    return None


def _module_tags(tree: ast.Module) -> tuple[str, ...]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRT_PATH" for t in stmt.targets
        ):
            value = stmt.value
            if isinstance(value, ast.Tuple):
                return _literal_tags(value.elts)
            return _literal_tags([value])
    return ("common",)


# --------------------------------------------------------------------------- scopes


def _scope_nodes(scope: ast.AST) -> Iterable[ast.AST]:
    """Nodes of one scope, not descending into nested functions, lambdas or classes."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


class _Visitor(ast.NodeVisitor):
    def __init__(self, filename: str, module_tags: tuple[str, ...],
                 variables: Mapping[str, str]) -> None:
        self.filename = filename
        self.tags = [module_tags]
        self.variables = variables
        # per scope: name -> path of the TensorRT reference it holds (None: shadowed)
        self.scopes: list[dict[str, tuple[str, ...] | None]] = []
        self.uses: list[ApiUse] = []

    # ------------------------------------------------------------- binding names
    def _bind_scope(self, scope: ast.AST) -> None:
        stores: dict[str, int] = {}
        assigns: list[ast.Assign] = []
        imports: dict[str, tuple[str, ...]] = {}
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                stores[node.id] = stores.get(node.id, 0) + 1
            elif isinstance(node, ast.arg):
                stores[node.arg] = stores.get(node.arg, 0) + 1
            elif isinstance(node, ast.Assign):
                assigns.append(node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == _MODULE:
                        imports[alias.asname or alias.name] = ()
            elif isinstance(node, ast.ImportFrom) and node.module == _MODULE:
                for alias in node.names:
                    imports[alias.asname or alias.name] = (alias.name,)
        scope_map: dict[str, tuple[str, ...] | None] = dict(imports)
        # a local name that is not an alias hides an alias of an enclosing scope; the
        # conventional names (``trt`` and TRT_VARIABLES) keep their meaning everywhere
        for name in stores:
            if name not in self.variables and name != "trt" and name not in imports:
                scope_map[name] = None
        self.scopes.append(scope_map)
        for node in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                continue
            name = node.targets[0].id
            if name in self.variables or name == "trt" or stores.get(name) != 1:
                continue
            ref = self._ref(node.value)
            if ref is not None:
                scope_map[name] = ref

    def _lookup(self, name: str) -> tuple[str, ...] | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name == "trt":
            return ()
        if name in self.variables:
            return (self.variables[name], CALL)
        return None

    def _ref(self, node: ast.expr) -> tuple[str, ...] | None:
        """The surface path of a TensorRT expression; None when it is not one."""
        if isinstance(node, ast.Name):
            return self._lookup(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and node.attr != "__init__":
                return None
            base = self._ref(node.value)
            return None if base is None else (*base, node.attr)
        if isinstance(node, ast.Call) and not _special_call(node):
            base = self._ref(node.func)
            return None if base is None else (*base, CALL)
        return None

    # ------------------------------------------------------------- scoping
    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for dec in node.decorator_list:
            self.visit(dec)
        tags = _tags_of(node)
        self.tags.append(tags if tags is not None else self.tags[-1])
        self._bind_scope(node)
        for child in node.body:
            self.visit(child)
        if not isinstance(node, ast.ClassDef):
            for default in (*node.args.defaults, *node.args.kw_defaults):
                if default is not None:
                    self.visit(default)
        else:
            for base in node.bases:
                self.visit(base)
        self.scopes.pop()
        self.tags.pop()

    visit_FunctionDef = _scoped
    visit_AsyncFunctionDef = _scoped
    visit_ClassDef = _scoped

    def visit_Module(self, node: ast.Module) -> None:
        self._bind_scope(node)
        self.generic_visit(node)
        self.scopes.pop()

    # ------------------------------------------------------------- uses
    def _record(self, node: ast.AST, expr: str, path: tuple[str, ...],
                call: tuple[int, tuple[str, ...]] | None = None, store: bool = False) -> None:
        if path:
            self.uses.append(ApiUse(self.filename, getattr(node, "lineno", 0), expr, path,
                                    self.tags[-1], call, store))

    def _visit_inside(self, node: ast.expr) -> None:
        """Visit what a recorded chain contains besides itself: the arguments of its calls."""
        cur = node
        while True:
            if isinstance(cur, ast.Attribute):
                cur = cur.value
            elif isinstance(cur, ast.Call):
                self.visit_Call(cur)  # the inner call is checked on its own (its arguments)
                return
            else:
                return

    def visit_Attribute(self, node: ast.Attribute) -> None:
        path = self._ref(node)
        if path is None:
            self.generic_visit(node)
            return
        self._record(node, _show(node), path, store=isinstance(node.ctx, ast.Store))
        self._visit_inside(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "setattr", "hasattr"):
            self._attr_builtin(node, func.id)
            return
        path = self._ref(func) if not _special_call(node) else None
        if path is None:
            self.generic_visit(node)
            return
        starred = any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords)
        call = None if starred else (
            len(node.args), tuple(k.arg for k in node.keywords if k.arg is not None))
        self._record(node, _show(func), path, call)
        if isinstance(func, ast.Attribute):
            self._visit_inside(func.value)
        for arg in (*node.args, *(k.value for k in node.keywords)):
            self.visit(arg)

    def _attr_builtin(self, node: ast.Call, name: str) -> None:
        args = node.args
        exempt = name == "hasattr" or (name == "getattr" and len(args) >= 3)
        if (not exempt and len(args) >= 2 and isinstance(args[1], ast.Constant)
                and isinstance(args[1].value, str)):
            base = self._ref(args[0])
            if base is not None:
                member = args[1].value
                self._record(node, f"{name}({_show(args[0])}, {member!r})", (*base, member),
                             store=name == "setattr")
                self._visit_inside(args[0])
                for arg in args[2:]:
                    self.visit(arg)
                return
        self.generic_visit(node)


def _special_call(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr",
                                                                  "hasattr")


def _show(node: ast.expr) -> str:
    """The chain as written, with call arguments elided."""
    if isinstance(node, ast.Attribute):
        return f"{_show(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{_show(node.func)}(...)"
    return ast.unparse(node)


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


# --------------------------------------------------------------------------- surfaces


def versions_for(tags: Sequence[str], surfaces: Iterable[ApiSurface]) -> list[str]:
    """Versions reached by any of ``tags``: those whose surface offers every feature of at
    least one tag (several tags are OR). Unknown tags reach none."""
    out = []
    for surface in surfaces:
        for tag in tags:
            if tag in PATH_FEATURES and all(
                surface.has(owner, member) if member else surface.has(owner)
                for owner, member in PATH_FEATURES[tag]
            ):
                out.append(surface.version)
                break
    return out


_RETURNS = re.compile(r"\)\s*->\s*(.+)$")
_OVERLOAD = re.compile(r"^\d+\.\s+")


def _overloads(sigs: Sequence[str]) -> list[str]:
    """The signatures of the overloads (pybind lists ``f(*args, **kwargs)`` first)."""
    numbered = [_OVERLOAD.sub("", s) for s in sigs if _OVERLOAD.match(s)]
    return numbered or list(sigs)


def _split_params(sig: str) -> list[str]:
    start = sig.find("(")
    depth, params, cur = 0, [], ""
    for ch in sig[start + 1:]:
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        params.append(cur.strip())
    return params


def _accepts(sig: str, npos: int, keywords: Sequence[str], bound: bool) -> bool:
    params = _split_params(sig)
    if bound and params and params[0].split(":")[0].strip() == "self":
        params = params[1:]
    if any(p.startswith("*") for p in params):
        return True
    names = [p.split(":")[0].split("=")[0].strip() for p in params]
    required = ["=" not in p for p in params]
    if npos > len(params):
        return False
    for i in range(npos, len(params)):
        if required[i] and names[i] not in keywords:
            return False
    return all(k in names[npos:] for k in keywords)


def _returned_class(surface: ApiSurface, sigs: Sequence[str]) -> str | None:
    returns = set()
    for sig in _overloads(sigs):
        m = _RETURNS.search(sig)
        returns.add(m.group(1).strip() if m else "")
    if len(returns) != 1:
        return None
    ret = returns.pop()
    if ret.startswith("trt.") and ret[4:] in surface.classes:
        return ret[4:]
    return None


@dataclass(frozen=True)
class _Found:
    missing: str | None = None  # the first step that is not in the surface
    sigs: tuple[str, ...] | None = None  # signatures of the callable the path ends at
    bound: bool = False  # a method called on an instance (its ``self`` is given)
    misuse: str = ""  # a member used against its kind (a property called, a method assigned)
    prop: str = ""  # the path ends at this property ("Class.name")
    read_only: bool = False  # ... and it has no setter


def _walk(surface: ApiSurface, path: Sequence[str]) -> _Found:
    """Follow ``path`` through one surface; stops quietly where nothing is known."""
    kind, qual = "module", ""
    sigs: tuple[str, ...] | None = None
    bound = False
    shown = ""
    for i, step in enumerate(path):
        last = i == len(path) - 1
        if step == CALL:
            shown += "(...)"
            if kind == "class":
                kind, sigs = "instance", None
            elif kind in ("method", "function") and sigs is not None:
                ret = _returned_class(surface, sigs)
                if ret is None:
                    return _Found() if not last else _Found(sigs=sigs, bound=bound)
                kind, qual = "instance", ret
            else:
                return _Found()
            continue
        shown = f"{shown}.{step}" if shown else step
        if kind == "module":
            if step not in surface.top_level:
                return _Found(missing=shown)
            if step in surface.classes:
                kind, qual = "class", step
            elif step in surface.enums:
                kind, qual = "enum", step
            elif step in surface.functions:
                kind, sigs, bound = "function", tuple(surface.functions[step]), False
            else:
                return _Found()
        elif kind in ("class", "instance"):
            if step not in surface.class_members(qual):
                return _Found(missing=f"{qual}.{step}")
            nested = f"{qual}.{step}"
            if nested in surface.classes:
                kind, qual = "class", nested
            elif nested in surface.enums:
                kind, qual = "enum", nested
            else:
                member = _member(surface, qual, step)
                if member.get("kind") in ("method", "constructor") and member.get("sig"):
                    bound = kind == "instance"
                    kind, sigs = "method", tuple(member["sig"])
                elif member.get("kind") == "property":
                    # The bindings' def_property/def_property_readonly: read or assigned, never
                    # called; a setter exists only where "settable" says so.
                    if not last and path[i + 1] == CALL:
                        return _Found(misuse=f"{qual}.{step} is a property, not a method")
                    if not last:
                        return _Found()
                    return _Found(prop=f"{qual}.{step}",
                                  read_only=member.get("settable") is False)
                else:
                    return _Found()
        elif kind == "enum":
            if step not in surface.enums[qual]:
                return _Found(missing=f"{qual}.{step}")
            return _Found()
        else:
            return _Found()
    if kind == "class":  # calling it runs the constructor
        init = _member(surface, qual, "__init__")
        init_sigs = init.get("sig")
        if init.get("kind") == "constructor" and isinstance(init_sigs, list) and init_sigs:
            return _Found(sigs=tuple(init_sigs), bound=True)
        return _Found()
    return _Found(sigs=sigs if kind in ("method", "function") else None, bound=bound)


def _member(surface: ApiSurface, qual: str, name: str) -> Mapping[str, object]:
    cls = surface.classes.get(qual)
    if cls is None:
        return {}
    if name in cls["members"]:
        member: Mapping[str, object] = cls["members"][name]
        return member
    for base in cls["bases"]:
        found = _member(surface, base, name)
        if found:
            return found
    return {}


def check_uses(uses: Iterable[ApiUse],
               versions: Sequence[str] = SUPPORTED_VERSIONS) -> list[Violation]:
    surfaces = [load_surface(v) for v in versions]
    by_version = {s.version: s for s in surfaces}
    violations = []
    seen: set[tuple[str, int, str, str]] = set()
    for use in uses:
        unknown = [t for t in use.tags if t not in PATH_FEATURES]
        if unknown or not use.tags:
            violations.append(Violation(use, f"(unknown path tag {unknown or '()'})"))
            continue
        for version in versions_for(use.tags, surfaces):
            found = _walk(by_version[version], use.path)
            if found.missing is not None:
                key = (use.file, use.line, found.missing, version)
                if key not in seen:  # a chain and its inner call name the same member
                    seen.add(key)
                    violations.append(Violation(use, version))
            elif found.misuse:
                key = (use.file, use.line, found.misuse, version)
                if key not in seen:
                    seen.add(key)
                    violations.append(Violation(use, version, found.misuse))
            elif use.call is not None and found.prop:
                violations.append(Violation(use, version,
                                            f"{found.prop} is a property, not a method"))
            elif use.store and found.read_only:
                violations.append(Violation(use, version, "a read-only property is assigned"))
            elif use.store and found.sigs is not None and use.call is None:
                violations.append(Violation(use, version, "a method is assigned to"))
            elif use.call is not None and found.sigs is not None:
                npos, keywords = use.call
                sigs = _overloads(found.sigs)
                if not any(_accepts(s, npos, keywords, found.bound) for s in sigs):
                    violations.append(Violation(
                        use, version,
                        f"no signature takes {npos} positional argument(s)"
                        + (f" and {', '.join(keywords)}=" if keywords else "")
                        + f" ({'; '.join(sigs)})"))
    return violations
