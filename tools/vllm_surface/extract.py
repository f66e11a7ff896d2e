"""Extract the surface of a pinned vLLM release from its wheel, statically (no vLLM import).

The wheel is a zip; its Python sources are parsed with ``ast`` and never executed, so neither
torch nor CUDA is needed. The output is facts only (names, types, numbers, file:line), written as
JSON to ``polyserve/wire/vllm_surface/vllm-<version>.json``:

- ``metrics``: every Prometheus metric constructed in the sources (Gauge/Counter/Histogram or a
  ``_gauge_cls``/``_counter_cls``/``_histogram_cls`` call): name, type, label names, buckets
  (resolved through ``vllm/v1/metrics/buckets.py`` where static), the ``if`` tests it is created
  under, and where;
- ``routes``: the HTTP routes the OpenAI server registers, followed statically from
  ``build_app`` through every ``register_*``/``attach_router`` call and ``include_router``;
- ``cli``: the ``vllm serve`` flags (``make_arg_parser``, ``FrontendArgs``, ``EngineArgs`` and
  ``AsyncEngineArgs.add_cli_args``), derived from the config dataclass fields as ``get_kwargs``
  does;
- ``protocol``: the error body, the stream chunk models, ``stream_options``, and how the request
  ``priority`` is read.

Usage::

    python tools/vllm_surface/extract.py [--wheel PATH] [--version 0.33.0] [--out FILE]

Without ``--wheel`` it runs ``pip download --no-deps vllm==<version>`` into a cache directory.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "0.33.0"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = ROOT / "polyserve" / "wire" / "vllm_surface"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polyserve-vllm"
METRIC_CTORS = {"Gauge": "gauge", "Counter": "counter", "Histogram": "histogram"}
METRIC_CLS_ATTRS = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}
ENGINE_LABELS = ["model_name", "engine"]
HTTP_METHODS = {"get", "post", "put", "delete", "patch", "head", "options"}

Json = Any


# --------------------------------------------------------------------------------------------
# the wheel's sources


class Source:
    """The ``.py`` files of a wheel, parsed on demand."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self._zip = zipfile.ZipFile(wheel)
        self.files = {n for n in self._zip.namelist() if n.endswith(".py")}
        self._text: dict[str, str] = {}
        self._tree: dict[str, ast.Module] = {}

    def text(self, path: str) -> str:
        if path not in self._text:
            self._text[path] = self._zip.read(path).decode("utf-8")
        return self._text[path]

    def tree(self, path: str) -> ast.Module:
        if path not in self._tree:
            self._tree[path] = ast.parse(self.text(path), filename=path)
        return self._tree[path]

    def module_path(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for cand in (base + ".py", base + "/__init__.py"):
            if cand in self.files:
                return cand
        return None

    def version(self) -> str:
        for n in self._zip.namelist():
            if n.endswith(".dist-info/METADATA"):
                for line in self._zip.read(n).decode().splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
        raise SystemExit("no METADATA in the wheel")


def where(path: str, node: ast.AST) -> str:
    return f"{path}:{getattr(node, 'lineno', 0)}"


def module_of(path: str) -> str:
    mod = path[:-3].replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def resolve_relative(path: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = module_of(path).split(".")
    if not path.endswith("__init__.py"):
        pkg = pkg[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    return ".".join([*pkg, *([node.module] if node.module else [])])


def imports_in(path: str, body: list[ast.stmt]) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None for a module import), for imports in ``body``."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in body:
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
            if isinstance(sub, ast.ImportFrom):
                mod = resolve_relative(path, sub)
                for alias in sub.names:
                    out[alias.asname or alias.name] = (mod, alias.name)
            elif isinstance(sub, ast.Import):
                for alias in sub.names:
                    out[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
    return out


def function_imports(path: str, fn: ast.AST) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for sub in ast.walk(fn):
        if isinstance(sub, ast.ImportFrom):
            mod = resolve_relative(path, sub)
            for alias in sub.names:
                out[alias.asname or alias.name] = (mod, alias.name)
    return out


def literal(node: ast.AST | None) -> tuple[bool, Any]:
    if node is None:
        return False, None
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def top_level(tree: ast.Module, name: str) -> ast.AST | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return node
        elif (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ) or (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            return node
    return None


def module_constant(src: Source, path: str, name: str, depth: int = 0) -> tuple[bool, Any]:
    """The literal value of a module-level name (following imports a few levels)."""
    if depth > 4:
        return False, None
    tree = src.tree(path)
    node = top_level(tree, name)
    if isinstance(node, ast.Assign | ast.AnnAssign):
        return literal(node.value)
    imp = imports_in(path, tree.body).get(name)
    if imp and imp[1]:
        target = src.module_path(imp[0])
        if target:
            return module_constant(src, target, imp[1], depth + 1)
    return False, None


def class_constants(src: Source, path: str, cls: str) -> dict[str, Any]:
    """String/number attributes of a class (an Enum's member values, class constants)."""
    node = top_level(src.tree(path), cls)
    out: dict[str, Any] = {}
    if isinstance(node, ast.ClassDef):
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                t = stmt.targets[0]
                ok, val = literal(stmt.value)
                if isinstance(t, ast.Name) and ok:
                    out[t.id] = val
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                ok, val = literal(stmt.value)
                if ok:
                    out[stmt.target.id] = val
    return out


def find_class(
    src: Source, path: str, name: str, depth: int = 0
) -> tuple[str, ast.ClassDef] | None:
    node = top_level(src.tree(path), name)
    if isinstance(node, ast.ClassDef):
        return path, node
    imp = imports_in(path, src.tree(path).body).get(name)
    if imp and imp[1] and depth < 4:
        target = src.module_path(imp[0])
        if target:
            return find_class(src, target, imp[1], depth + 1)
    return None


def enum_values(src: Source, path: str, name: str) -> list[str] | None:
    """The str() of each member of an Enum class (a __str__ indexing a constant tuple is followed)."""
    got = find_class(src, path, name)
    if got is None:
        return None
    cpath, cls = got
    members = [
        (s.targets[0].id, literal(s.value)[1])
        for s in cls.body
        if isinstance(s, ast.Assign)
        and isinstance(s.targets[0], ast.Name)
        and not s.targets[0].id.startswith("_")
    ]
    dunder = next(
        (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__str__"), None
    )
    if dunder is not None:
        ret = next((n for n in ast.walk(dunder) if isinstance(n, ast.Return)), None)
        if ret and isinstance(ret.value, ast.Subscript) and isinstance(ret.value.value, ast.Name):
            ok, table = module_constant(src, cpath, ret.value.value.id)
            if ok and isinstance(table, list | tuple | dict):
                return [str(table[v]) for _, v in members]
        return None
    vals = [v for _, v in members]
    return [str(v) for v in vals] if all(isinstance(v, str) for v in vals) else None


# --------------------------------------------------------------------------------------------
# metrics


@dataclass
class Ctx:
    conditions: list[str] = field(default_factory=list)


def walk_with_conditions(
    body: list[ast.stmt], conds: list[str]
) -> Iterator[tuple[ast.AST, list[str]]]:
    """Every node under ``body`` with the ``if`` tests (source text) that enclose it."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            test = ast.unparse(stmt.test)
            yield stmt.test, conds
            yield from walk_with_conditions(stmt.body, [*conds, test])
            yield from walk_with_conditions(stmt.orelse, [*conds, f"not ({test})"])
            if stmt.body and isinstance(stmt.body[-1], ast.Return) and not stmt.orelse:
                # an early return guards what follows
                neg = (
                    ast.unparse(stmt.test.operand)
                    if isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not)
                    else f"not ({test})"
                )
                conds = [*conds, neg]
        else:
            for sub in ast.walk(stmt):
                yield sub, conds
            # nested ifs inside other compound statements are rare for metric calls; loops and
            # try blocks are walked flat (their conditions are not recorded)


def metric_kind(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name) and f.id in METRIC_CTORS:
        return METRIC_CTORS[f.id]
    if isinstance(f, ast.Attribute):
        if f.attr in METRIC_CLS_ATTRS:
            return METRIC_CLS_ATTRS[f.attr]
        if (
            f.attr in METRIC_CTORS
            and isinstance(f.value, ast.Name)
            and f.value.id == "prometheus_client"
        ):
            return METRIC_CTORS[f.attr]
    return None


def kwarg(call: ast.Call, name: str, pos: int | None = None) -> ast.expr | None:
    for k in call.keywords:
        if k.arg == name:
            return k.value
    if pos is not None and len(call.args) > pos:
        return call.args[pos]
    return None


def local_assignments(fn: ast.AST) -> dict[str, ast.expr]:
    out: dict[str, ast.expr] = {}
    for sub in ast.walk(fn):
        if isinstance(sub, ast.Assign):
            for t in sub.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, sub.value)
                elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    out.setdefault(f"{t.value.id}.{t.attr}", sub.value)
    return out


class MetricResolver:
    def __init__(self, src: Source, path: str, fn: ast.AST, notes: list[str]) -> None:
        self.src, self.path, self.fn = src, path, fn
        self.local = local_assignments(fn)
        self.notes = notes

    def strings(self, node: ast.AST | None, depth: int = 0) -> list[str] | None:
        """A list of strings an expression evaluates to, if static."""
        if node is None or depth > 6:
            return None
        ok, val = literal(node)
        if ok and isinstance(val, list | tuple) and all(isinstance(v, str) for v in val):
            return list(val)
        if isinstance(node, ast.List | ast.Tuple):
            out: list[str] = []
            for elt in node.elts:
                s = self.string(elt, depth + 1)
                if s is None:
                    return None
                out.append(s)
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.strings(node.left, depth + 1), self.strings(node.right, depth + 1)
            return None if left is None or right is None else left + right
        if isinstance(node, ast.Name):
            if node.id in self.local:
                return self.strings(self.local[node.id], depth + 1)
            args = getattr(self.fn, "args", None)
            if node.id == "labelnames" and args and any(a.arg == "labelnames" for a in args.args):
                self.notes.append(
                    "labelnames is a parameter: PrometheusStatLogger passes the engine labels"
                )
                return list(ENGINE_LABELS)
        return None

    def string(self, node: ast.AST | None, depth: int = 0) -> str | None:
        if node is None or depth > 6:
            return None
        ok, val = literal(node)
        if ok and isinstance(val, str):
            return val
        if isinstance(node, ast.Name):
            if node.id in self.local:
                return self.string(self.local[node.id], depth + 1)
            ok, val = module_constant(self.src, self.path, node.id)
            if ok and isinstance(val, str):
                return val
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            key = f"{node.value.id}.{node.attr}"
            if key in self.local:
                return self.string(self.local[key], depth + 1)
            consts = class_constants(self.src, self.path, node.value.id)
            if isinstance(consts.get(node.attr), str):
                return str(consts[node.attr])
        return None

    def iter_values(self, node: ast.expr) -> list[str] | None:
        vals = self.strings(node)
        if vals is not None:
            return vals
        if isinstance(node, ast.Name):
            ok, val = module_constant(self.src, self.path, node.id)
            if ok and isinstance(val, list | tuple):
                return [str(v) for v in val]
            return enum_values(self.src, self.path, node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            got = find_class(self.src, self.path, node.value.id)
            if got:
                consts = class_constants(self.src, got[0], got[1].name)
                if isinstance(consts.get(node.attr), list | tuple):
                    return [str(v) for v in consts[node.attr]]
        return None

    def label_values(self, call: ast.Call) -> list[str] | None:
        """Values of the extra label, from the loops that bind the metric's label sets."""
        var = None
        for sub in ast.walk(self.fn):
            if isinstance(sub, ast.Assign) and sub.value is call:
                t = sub.targets[0]
                var = t.id if isinstance(t, ast.Name) else ast.unparse(t)
        if var is None:
            return None
        for sub in ast.walk(self.fn):
            loops: list[tuple[ast.expr, list[ast.AST]]] = []
            if isinstance(sub, ast.For):
                loops.append((sub.iter, list(sub.body)))
            elif isinstance(sub, ast.DictComp | ast.ListComp | ast.SetComp):
                for gen in sub.generators:
                    elt = [sub.key, sub.value] if isinstance(sub, ast.DictComp) else [sub.elt]
                    loops.append((gen.iter, elt))
            for it, body in loops:
                if any(
                    ast.unparse(n) == var
                    for b in body
                    for n in ast.walk(b)
                    if isinstance(n, ast.Name | ast.Attribute)
                ):
                    vals = self.iter_values(it)
                    if vals:
                        return vals
        return None

    def loop_names(self, name: str) -> list[tuple[str, list[str]]]:
        """Names bound to ``name`` by ``for name, doc in X`` where X is a list of tuples, each
        with the ``if`` tests its list is assigned under."""
        found: list[tuple[str, list[str]]] = []
        assign_conds = {id(n): c for n, c in walk_with_conditions(getattr(self.fn, "body", []), [])}
        for sub in ast.walk(self.fn):
            gens = sub.generators if isinstance(sub, ast.ListComp | ast.DictComp) else []
            for gen in gens:
                tgt = gen.target
                first = tgt.elts[0] if isinstance(tgt, ast.Tuple) and tgt.elts else tgt
                if (
                    isinstance(first, ast.Name)
                    and first.id == name
                    and isinstance(gen.iter, ast.Name)
                ):
                    for sub2 in ast.walk(self.fn):
                        if isinstance(sub2, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == gen.iter.id for t in sub2.targets
                        ):
                            for elt in getattr(sub2.value, "elts", []):
                                head = elt.elts[0] if isinstance(elt, ast.Tuple) else elt
                                ok, val = literal(head)
                                if ok and isinstance(val, str):
                                    found.append((val, assign_conds.get(id(sub2), [])))
        return found


def bucket_families(src: Source) -> tuple[dict[str, Json], str]:
    path = "vllm/v1/metrics/buckets.py"
    tree = src.tree(path)
    fams: dict[str, Json] = {}
    defaults = top_level(tree, "_STATIC_FAMILY_DEFAULTS")
    assert isinstance(defaults, ast.AnnAssign | ast.Assign) and isinstance(defaults.value, ast.Dict)
    for k, v in zip(defaults.value.keys, defaults.value.values, strict=True):
        ok, key = literal(k)
        assert ok and isinstance(v, ast.Name)
        const = top_level(tree, v.id)
        assert isinstance(const, ast.AnnAssign | ast.Assign)
        okv, values = literal(const.value)
        fams[key] = {
            "family": key,
            "values": [float(x) for x in values] if okv else None,
            "source": where(path, const),
        }
    # the token-count family: a mantissa series capped at max_model_len
    series = top_level(tree, "build_1_2_5_buckets")
    mantissas: list[int] | None = None
    for sub in ast.walk(series) if series else ():
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Name)
            and sub.func.id == "build_buckets"
        ):
            ok, m = literal(sub.args[0])
            mantissas = m if ok else None
    keys_alias = top_level(tree, "BucketFamilyKey")
    all_keys: list[str] = []
    if isinstance(keys_alias, ast.AnnAssign | ast.Assign) and isinstance(
        keys_alias.value, ast.Subscript
    ):
        ok, ks = literal(keys_alias.value.slice)
        all_keys = list(ks) if ok else []
    for key in all_keys:
        if key not in fams:
            fams[key] = {
                "family": key,
                "values": None,
                "resolvable": False,
                "rule": "mantissas times 10**k, k = 0, 1, ..., capped at max_model_len",
                "mantissas": mantissas,
                "depends_on": "max_model_len",
                "source": where(path, series) if series else path,
            }
    hb = top_level(tree, "histogram_buckets")
    return fams, where(path, hb) if hb else path


def metrics(src: Source) -> tuple[list[Json], Json]:
    families, override_src = bucket_families(src)
    out: list[Json] = []
    candidates = sorted(
        p
        for p in src.files
        if p.startswith("vllm/") and re.search(r"Gauge|Counter|Histogram|_cls\(", src.text(p))
    )
    for path in candidates:
        tree = src.tree(path)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            # bucket variables of this function: x = histogram_buckets("family", ...)
            bucket_vars: dict[str, str] = {}
            for sub in ast.walk(fn):
                if (
                    isinstance(sub, ast.Assign)
                    and isinstance(sub.value, ast.Call)
                    and isinstance(sub.value.func, ast.Name)
                    and sub.value.func.id == "histogram_buckets"
                ):
                    ok, fam = literal(sub.value.args[0])
                    for t in sub.targets:
                        if isinstance(t, ast.Name) and ok:
                            bucket_vars[t.id] = fam
            for node, conds in walk_with_conditions(fn.body, []):
                if not isinstance(node, ast.Call):
                    continue
                kind = metric_kind(node)
                if kind is None:
                    continue
                notes: list[str] = []
                res = MetricResolver(src, path, fn, notes)
                name_node = kwarg(node, "name", 0)
                names: list[tuple[str, list[str]]] = (
                    [(n, [])] if (n := res.string(name_node)) else []
                )
                if not names and isinstance(name_node, ast.Name):
                    names = res.loop_names(name_node.id)
                    if names:
                        notes.append("one metric per entry of a (name, documentation) list")
                if not names and kwarg(node, "documentation", 1) is None:
                    continue  # not a prometheus metric (collections.Counter, a reader's record)
                if not names:
                    out.append(
                        {
                            "name": None,
                            "type": kind,
                            "unresolved": "name computed at run time",
                            "source": where(path, node),
                            "scope": metric_scope(path),
                        }
                    )
                    continue
                label_node = kwarg(node, "labelnames", 2)
                labels = res.strings(label_node)
                if labels is None and isinstance(label_node, ast.List):
                    # a list of self.<attr> names set to string constants in the same function
                    labels = [res.string(e) or "?" for e in label_node.elts]
                    if "?" in labels:
                        labels = None
                buckets: Json = None
                if kind == "histogram":
                    bnode = kwarg(node, "buckets")
                    if isinstance(bnode, ast.Name) and bnode.id in bucket_vars:
                        buckets = dict(families[bucket_vars[bnode.id]])
                        buckets["overridable_by"] = (
                            f"--custom-histogram-buckets (histogram_buckets, {override_src})"
                        )
                    else:
                        ok, vals = literal(bnode)
                        if ok and bnode is not None:
                            buckets = {"values": [float(x) for x in vals]}
                        elif bnode is None:
                            buckets = {
                                "values": None,
                                "resolvable": True,
                                "default": "prometheus_client DEFAULT_BUCKETS",
                            }
                        else:
                            buckets = {
                                "values": None,
                                "resolvable": False,
                                "expr": ast.unparse(bnode)[:80],
                            }
                for name, name_conds in names:
                    conds_here = [*conds, *(c for c in name_conds if c not in conds)]
                    exposed = metric_samples(name, kind)
                    entry: Json = {
                        "name": name,
                        "type": kind,
                        "labels": labels,
                        "exposed_as": exposed,
                        "source": where(path, node),
                        "scope": metric_scope(path),
                    }
                    if labels is None:
                        entry["labels_unresolved"] = (
                            ast.unparse(label_node)[:80] if label_node else "none given"
                        )
                    if buckets is not None:
                        entry["buckets"] = buckets
                    if labels and len(labels) > 2 and labels[:2] == ENGINE_LABELS:
                        lv = res.label_values(node)
                        if lv is not None and len(labels) == 3:
                            entry["label_values"] = {labels[2]: lv}
                    if conds_here:
                        entry["created_when"] = conds_here
                    if notes:
                        entry["notes"] = sorted(set(notes))
                    out.append(entry)
    # names that are declared as "vllm:..." constants in files whose metrics are built at run time
    declared: list[Json] = []
    resolved = {m["name"] for m in out if m["name"]}
    for path in sorted(src.files):
        if not path.startswith("vllm/") or path.startswith("vllm/benchmarks/"):
            continue
        text = src.text(path)
        if '"vllm:' not in text:
            continue
        for node in ast.walk(src.tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                if re.fullmatch(r"vllm:[a-z0-9_]+", v) and v not in resolved:
                    declared.append({"name": v, "source": where(path, node)})
    seen: set[str] = set()
    uniq = []
    for d in declared:
        if d["name"] not in seen:
            seen.add(d["name"])
            uniq.append(d)
    out.sort(
        key=lambda m: (
            m["scope"] != "engine",
            m["source"].split(":")[0],
            int(m["source"].split(":")[1]),
        )
    )
    return out, uniq


def metric_samples(name: str, kind: str) -> list[str]:
    """The sample names prometheus_client exposes for a metric family (``_created`` aside)."""
    if kind == "counter":
        base = name[: -len("_total")] if name.endswith("_total") else name
        return [base + "_total"]
    if kind == "histogram":
        return [name + "_bucket", name + "_count", name + "_sum"]
    return [name]


def metric_scope(path: str) -> str:
    if path in {
        "vllm/v1/metrics/loggers.py",
        "vllm/v1/spec_decode/metrics.py",
        "vllm/v1/metrics/perf.py",
    }:
        return "engine"
    if path.startswith("vllm/entrypoints") or path.startswith("vllm/parser"):
        return "frontend"
    if "kv_transfer" in path or "kv_offload" in path or "kv_connector" in path:
        return "kv_connector"
    if "ec_connector" in path or "ec_transfer" in path:
        return "ec_connector"
    return "other"


# --------------------------------------------------------------------------------------------
# routes


class RouteWalker:
    def __init__(self, src: Source) -> None:
        self.src = src
        self.routes: list[Json] = []
        self.visited: set[tuple[str, str]] = set()

    def router_routes(self, path: str, var: str) -> list[Json]:
        """Routes declared on a module's router variable (decorators and add_api_route)."""
        tree = self.src.tree(path)
        prefix = ""
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == var for t in node.targets)
                and isinstance(node.value, ast.Call)
            ):
                ok, p = literal(kwarg(node.value, "prefix"))
                prefix = p if ok and isinstance(p, str) else prefix
        found: list[Json] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    r = self.decorator_route(dec, var)
                    if r:
                        method, rpath = r
                        found.append(
                            {"method": method, "path": prefix + rpath, "source": where(path, dec)}
                        )
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_api_route"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == var
            ):
                found.extend(self.add_api_route(path, node, prefix))
        return found

    @staticmethod
    def decorator_route(dec: ast.expr, var: str) -> tuple[str, str] | None:
        if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
            return None
        obj = dec.func.value
        if not (isinstance(obj, ast.Name) and obj.id == var):
            return None
        method = dec.func.attr
        if method not in HTTP_METHODS and method != "api_route":
            return None
        ok, p = literal(dec.args[0]) if dec.args else (False, None)
        if method == "api_route":
            okm, ms = literal(kwarg(dec, "methods"))
            method = ",".join(ms) if okm else "GET"
        return (method.upper(), p if ok else f"<{ast.unparse(dec.args[0])[:60]}>")

    @staticmethod
    def add_api_route(path: str, node: ast.Call, prefix: str) -> list[Json]:
        ok, p = literal(node.args[0]) if node.args else (False, None)
        okm, ms = literal(kwarg(node, "methods"))
        methods = ms if okm else ["GET"]
        rpath = prefix + p if ok else f"<{ast.unparse(node.args[0])[:60]}>"
        return [{"method": m.upper(), "path": rpath, "source": where(path, node)} for m in methods]

    def walk_function(self, module: str, name: str, conds: list[str], via: list[str]) -> None:
        path = self.src.module_path(module)
        if path is None or (path, name) in self.visited:
            return
        tree = self.src.tree(path)
        fn = top_level(tree, name)
        if fn is None:  # a re-export: follow the module's import
            imp = imports_in(path, tree.body).get(name)
            if imp and imp[1]:
                self.walk_function(imp[0], imp[1], conds, via)
            return
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        self.visited.add((path, name))
        here = [*via, f"{name} ({where(path, fn)})"]
        imps = {**imports_in(path, tree.body), **function_imports(path, fn)}
        for node, c in walk_with_conditions(fn.body, conds):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    r = self.decorator_route(dec, "app")
                    if r:
                        self.add(r[0], r[1], where(path, dec), c, here)
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "include_router" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Name):
                    imp = imps.get(arg.id)
                    if imp and imp[1]:
                        rpath = self.src.module_path(imp[0])
                        rvar = imp[1]
                    else:
                        rpath, rvar = path, arg.id
                    if rpath:
                        for r in self.router_routes(rpath, rvar):
                            self.add(r["method"], r["path"], r["source"], c, here)
            elif (
                isinstance(f, ast.Attribute)
                and f.attr == "add_api_route"
                and isinstance(f.value, ast.Name)
                and f.value.id == "app"
            ):
                for r in self.add_api_route(path, node, ""):
                    self.add(r["method"], r["path"], r["source"], c, here)
            elif isinstance(f, ast.Name) and f.id == "Mount" and node.args:
                ok, p = literal(node.args[0])
                if ok:
                    self.add("GET", p, where(path, node), c, here, mount=True)
            elif isinstance(f, ast.Name):
                imp = imps.get(f.id)
                if imp and imp[1]:
                    self.walk_function(imp[0], imp[1], c, here)
                elif top_level(tree, f.id) is not None:
                    self.walk_function(module_of(path), f.id, c, here)

    def add(
        self,
        method: str,
        path: str,
        source: str,
        conds: list[str],
        via: list[str],
        mount: bool = False,
    ) -> None:
        entry: Json = {"method": method, "path": path, "source": source, "registered_by": via[-1]}
        if conds:
            entry["registered_when"] = conds
        if mount:
            entry["mount"] = "ASGI app mounted at this path (the prometheus exposition app)"
        self.routes.append(entry)


def routes(src: Source) -> tuple[list[Json], str]:
    w = RouteWalker(src)
    w.walk_function("vllm.entrypoints.launchers.app", "build_app", [], [])
    uniq: dict[tuple[str, str, str], Json] = {}
    for r in w.routes:
        uniq.setdefault((r["method"], r["path"], r["source"]), r)
    out = sorted(uniq.values(), key=lambda r: (r["path"], r["method"]))
    app_py = "vllm/entrypoints/launchers/app.py"
    fn = top_level(src.tree(app_py), "build_app")
    return out, where(app_py, fn) if fn else app_py


# --------------------------------------------------------------------------------------------
# CLI flags


class Classes:
    """Class definitions across the wheel, by name (the config modules first)."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.by_name: dict[str, list[tuple[str, ast.ClassDef]]] = {}
        for path in sorted(src.files, key=lambda p: (not p.startswith("vllm/config/"), p)):
            if not path.startswith("vllm/"):
                continue
            text = src.text(path)
            if "class " not in text:
                continue
            if not (
                path.startswith(("vllm/config/", "vllm/engine/", "vllm/entrypoints/"))
                or "@config" in text
                or "dataclass" in text
            ):
                continue
            for node in src.tree(path).body:
                if isinstance(node, ast.ClassDef):
                    self.by_name.setdefault(node.name, []).append((path, node))

    def get(self, name: str) -> tuple[str, ast.ClassDef] | None:
        c = self.by_name.get(name)
        return c[0] if c else None

    def fields(self, name: str) -> dict[str, tuple[str, ast.AnnAssign]]:
        got = self.get(name)
        if got is None:
            return {}
        path, cls = got
        out: dict[str, tuple[str, ast.AnnAssign]] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name):
                out.update(self.fields(base.id))
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if "ClassVar" in ast.unparse(stmt.annotation) or "InitVar" in ast.unparse(
                    stmt.annotation
                ):
                    continue
                out[stmt.target.id] = (path, stmt)
        return out

    def is_dataclass(self, name: str) -> bool:
        got = self.get(name)
        if got is None:
            return False
        _, cls = got
        decs = [ast.unparse(d) for d in cls.decorator_list]
        return any(
            d in {"config", "dataclass"} or d.startswith(("dataclass(", "config(", "dataclasses."))
            for d in decs
        )


def split_union(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return split_union(node.left) + split_union(node.right)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id == "Optional":
            return [*split_union(node.slice), ast.Constant(None)]
        if node.value.id == "Union":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return [x for e in elts for x in split_union(e)]
        if node.value.id == "Annotated":
            first = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
            return split_union(first)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return split_union(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return [node]
    return [node]


class TypeResolver:
    def __init__(self, src: Source, classes: Classes) -> None:
        self.src, self.classes = src, classes

    def alias(self, path: str, name: str, depth: int = 0) -> tuple[str, ast.expr] | None:
        """A module-level type alias (X = Literal[...], type X = ...), following imports."""
        if depth > 5:
            return None
        tree = self.src.tree(path)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                return path, node.value
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and node.value is not None
            ):
                return path, node.value
            if (
                type(node).__name__ == "TypeAlias"
                and getattr(node, "name", None) is not None
                and node.name.id == name
            ):  # type: ignore[attr-defined]
                return path, node.value
        imp = imports_in(path, tree.body).get(name)
        if imp and imp[1]:
            target = self.src.module_path(imp[0])
            if target:
                return self.alias(target, imp[1], depth + 1)
        return None

    def hints(self, path: str, ann: ast.expr, depth: int = 0) -> list[tuple[str, Any]]:
        """The type hints of an annotation as (kind, detail) pairs."""
        out: list[tuple[str, Any]] = []
        for part in split_union(ann):
            if isinstance(part, ast.Constant) and part.value is None:
                out.append(("none", None))
                continue
            if isinstance(part, ast.Name) and part.id in {
                "bool",
                "int",
                "float",
                "str",
                "dict",
                "list",
                "tuple",
                "set",
                "Any",
            }:
                out.append((part.id, None))
                continue
            if isinstance(part, ast.Subscript) and isinstance(part.value, ast.Name | ast.Attribute):
                head = part.value.id if isinstance(part.value, ast.Name) else part.value.attr
                if head == "Literal":
                    ok, vals = literal(part.slice)
                    if ok:
                        out.append(("literal", list(vals) if isinstance(vals, tuple) else [vals]))
                        continue
                    vals2 = []
                    for e in part.slice.elts if isinstance(part.slice, ast.Tuple) else [part.slice]:
                        okv, v = literal(e)
                        vals2.append(v if okv else ast.unparse(e))
                    out.append(("literal", vals2))
                    continue
                if head in {"list", "List", "Sequence"}:
                    out.append(("list", self.elem(path, part.slice, depth)))
                    continue
                if head in {"tuple", "Tuple"}:
                    elts = part.slice.elts if isinstance(part.slice, ast.Tuple) else [part.slice]
                    ell = any(isinstance(e, ast.Constant) and e.value is Ellipsis for e in elts)
                    out.append(
                        ("tuple", (self.elem(path, elts[0], depth), "+" if ell else len(elts)))
                    )
                    continue
                if head in {"set", "Set", "frozenset"}:
                    out.append(("set", self.elem(path, part.slice, depth)))
                    continue
                if head in {"dict", "Dict", "Mapping"}:
                    out.append(("dict", None))
                    continue
                if head == "type":
                    out.append(("class", ast.unparse(part)))
                    continue
            if isinstance(part, ast.Name | ast.Attribute):
                nm = part.id if isinstance(part, ast.Name) else part.attr
                if self.classes.is_dataclass(nm):
                    out.append(("dataclass", nm))
                    continue
                got = self.classes.get(nm)
                if got and any(
                    ast.unparse(b) in {"dict", "Dict"} or ast.unparse(b).startswith("dict[")
                    for b in got[1].bases
                ):
                    out.append(("dict", nm))
                    continue
                al = self.alias(path, nm) if depth < 5 else None
                if al is not None:
                    out.extend(self.hints(al[0], al[1], depth + 1))
                    continue
                out.append(("other", nm))
                continue
            out.append(("other", ast.unparse(part)))
        return out

    def elem(self, path: str, node: ast.expr, depth: int) -> str:
        hs = self.hints(path, node, depth + 1)
        kinds = {k for k, _ in hs}
        if len(hs) > 1 and "str" in kinds:
            return "str"
        if hs and hs[0][0] == "literal":
            return type(hs[0][1][0]).__name__ if hs[0][1] else "str"
        return (
            hs[0][0]
            if hs and hs[0][0] in {"int", "float", "str", "bool"}
            else (hs[0][1] if hs and hs[0][0] == "dataclass" else "str")
        )


HUMAN_READABLE_INT = {
    "max_num_batched_tokens",
    "max_num_scheduled_tokens",
    "kv_cache_memory_bytes",
    "safetensors_prefetch_block_size",
    "max_num_queued_tokens",
}


_SRC: list[Source] = []  # the wheel being read, for resolving constants in field defaults


def const_value(path: str | None, v: ast.expr) -> tuple[bool, Any]:
    ok, val = literal(v)
    if ok:
        return True, val
    if path and _SRC and isinstance(v, ast.Name):
        return module_constant(_SRC[0], path, v.id)
    return False, None


def field_default(node: ast.AnnAssign, path: str | None = None) -> tuple[bool, Any]:
    v = node.value
    if v is None:
        return False, "required"
    ok, val = const_value(path, v)
    if ok:
        return True, val
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Name | ast.Attribute):
        fname = v.func.id if isinstance(v.func, ast.Name) else v.func.attr
        if fname in {"field", "Field"}:
            d = kwarg(v, "default", 0 if fname == "Field" else None)
            if d is not None:
                okd, dv = const_value(path, d)
                return (True, dv) if okd else (False, ast.unparse(d)[:80])
            fac = kwarg(v, "default_factory")
            if isinstance(fac, ast.Name) and fac.id in {"list", "dict", "set", "tuple"}:
                return True, {"list": [], "dict": {}, "set": [], "tuple": []}[fac.id]
            if isinstance(fac, ast.Lambda):
                ok2, val2 = literal(fac.body)
                if ok2:
                    return True, val2
            if fac is not None:
                return False, f"default_factory={ast.unparse(fac)[:60]}"
    return False, ast.unparse(v)[:80]


def derive_kwargs(tr: TypeResolver, cls: str, fname: str, path: str, node: ast.AnnAssign) -> Json:
    """What vLLM's _compute_kwargs makes of a dataclass field (engine/arg_utils.py)."""
    hs = tr.hints(path, node.annotation)
    kinds = [k for k, _ in hs]
    ks = set(kinds)
    d: Json = {
        "field": f"{cls}.{fname}",
        "field_source": where(path, node),
        "annotation": ast.unparse(node.annotation)[:120],
    }
    ok, default = field_default(node, path)
    if not ok and isinstance(default, str) and default.isidentifier() and _SRC:
        consts = class_constants(_SRC[0], path, cls)  # a ClassVar constant of the config class
        if default in consts:
            ok, default = True, consts[default]
    d["default"] = default if ok else None
    if not ok:
        d["default_not_static"] = default
    dc = next((v for k, v in hs if k == "dataclass"), None)
    if dc is not None:
        d["type"] = f"json ({dc})"
    elif ks == {"bool", "str", "none"}:
        d.update(type="str", nargs="?", const=True)
    elif "bool" in ks:
        d["action"] = "BooleanOptionalAction"
        d["type"] = "bool"
    elif "literal" in ks:
        opts = next(v for k, v in hs if k == "literal")
        try:
            opts_sorted = sorted(opts)
        except TypeError:
            opts_sorted = opts
        d["type"] = type(opts[0]).__name__ if opts else "str"
        d["metavar" if "str" in ks else "choices"] = opts_sorted
    elif "tuple" in ks or "list" in ks or "set" in ks:
        kind = "tuple" if "tuple" in ks else "list" if "list" in ks else "set"
        det = next(v for k, v in hs if k == kind)
        if kind == "tuple":
            d.update(type=det[0], nargs=det[1])
        else:
            d.update(type=det, nargs="+")
    elif "int" in ks:
        d["type"] = (
            "int (or 'auto', human-readable)"
            if fname == "max_model_len"
            else ("int (human-readable: 1K, 2M, ...)" if fname in HUMAN_READABLE_INT else "int")
        )
    elif "float" in ks:
        d["type"] = "float"
    elif "dict" in ks and ("str" in ks or "other" in ks or "dataclass" in ks):
        d["type"] = "dict or str"
    elif "dict" in ks:
        d["type"] = "json"
    else:
        d["type"] = "str"
    if "none" in ks and "bool" not in ks:
        d["optional"] = True
        if "choices" in d:
            d["choices"] = [*d["choices"], None]
    return d


def cli(src: Source) -> tuple[list[Json], Json]:
    classes = Classes(src)
    tr = TypeResolver(src, classes)
    flags: list[Json] = []
    notes: Json = {}

    def from_field(cls: str, fname: str) -> Json:
        fs = classes.fields(cls)
        if fname not in fs:
            return {"field": f"{cls}.{fname}", "unresolved": "field not found"}
        p, n = fs[fname]
        return derive_kwargs(tr, cls, fname, p, n)

    def add(options: list[str], kw: Json, source: str, conds: list[str], group: str) -> None:
        entry: Json = {"options": options, **kw, "source": source, "group": group}
        if kw.get("action") == "BooleanOptionalAction":
            entry["negated"] = ["--no-" + o[2:] for o in options if o.startswith("--")]
        if conds:
            entry["added_when"] = conds
        flags.append(entry)

    def explicit_kwargs(
        call: ast.Call, fn_locals: dict[str, ast.expr], cls_fields_of: str | None
    ) -> Json:
        kw: Json = {}
        for k in call.keywords:
            if k.arg is None:
                continue
            if k.arg in {"help", "description", "title"}:
                continue
            if k.arg == "action":
                a = ast.unparse(k.value)
                kw["action"] = (
                    "BooleanOptionalAction"
                    if a.endswith("BooleanOptionalAction")
                    else a.strip("'\"")
                )
                continue
            if k.arg == "type":
                kw["type"] = ast.unparse(k.value)[:60]
                continue
            ok, val = literal(k.value)
            if ok:
                kw[k.arg] = val
            elif (
                k.arg == "default"
                and isinstance(k.value, ast.Attribute)
                and isinstance(k.value.value, ast.Name)
            ):
                fd = classes.fields(k.value.value.id).get(k.value.attr)
                if fd:
                    okd, dv = field_default(fd[1], fd[0])
                    kw["default"] = dv if okd else None
                    if not okd:
                        kw["default_not_static"] = dv
                else:
                    kw["default"] = None
                    kw["default_not_static"] = ast.unparse(k.value)[:80]
            else:
                kw[k.arg] = None
                kw[f"{k.arg}_not_static"] = ast.unparse(k.value)[:80]
        return kw

    def walk_add_cli_args(path: str, fn: ast.FunctionDef, group_default: str) -> None:
        kwargs_vars: dict[str, str] = {}  # var -> config class
        field_vars: dict[str, tuple[str, str]] = {}  # var -> (class, field)
        overrides: dict[tuple[str, str], Json] = {}
        groups: dict[str, str] = {}
        for node, conds in walk_with_conditions(fn.body, []):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t, v = node.targets[0], node.value
                if (
                    isinstance(t, ast.Name)
                    and isinstance(v, ast.Call)
                    and isinstance(v.func, ast.Name)
                    and v.func.id == "get_kwargs"
                ):
                    if isinstance(v.args[0], ast.Name):
                        kwargs_vars[t.id] = v.args[0].id
                elif (
                    isinstance(t, ast.Name)
                    and isinstance(v, ast.Subscript)
                    and isinstance(v.value, ast.Call)
                    and isinstance(v.value.func, ast.Name)
                    and v.value.func.id == "get_kwargs"
                    and isinstance(v.value.args[0], ast.Name)
                ):
                    ok, fname = literal(v.slice)
                    if ok:
                        field_vars[t.id] = (v.value.args[0].id, fname)
                elif (
                    isinstance(t, ast.Name)
                    and isinstance(v, ast.Call)
                    and isinstance(v.func, ast.Attribute)
                    and v.func.attr == "add_argument_group"
                ):
                    ok, title = literal(kwarg(v, "title", 0))
                    groups[t.id] = title if ok else t.id
                elif (
                    isinstance(t, ast.Subscript)
                    and isinstance(t.value, ast.Subscript)
                    and isinstance(t.value.value, ast.Name)
                    and t.value.value.id in kwargs_vars
                ):
                    okf, fname = literal(t.value.slice)
                    okk, key = literal(t.slice)
                    if okf and okk and key != "help":
                        okv, val = literal(v)
                        overrides.setdefault((t.value.value.id, fname), {})[key] = (
                            val if okv else ast.unparse(v)[:60]
                        )
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
            ):
                continue
            options = []
            for a in node.args:
                ok, s = literal(a)
                if ok and isinstance(s, str):
                    options.append(s)
            if not options:
                continue
            grp_obj = node.func.value
            group = (
                groups.get(grp_obj.id, group_default)
                if isinstance(grp_obj, ast.Name)
                else group_default
            )
            kw: Json = {}
            spread: list[ast.keyword] = []
            for k in node.keywords:
                if k.arg is None and isinstance(k.value, ast.Dict):
                    # **{**x_kwargs["field"], "default": None}
                    for dk, dv in zip(k.value.keys, k.value.values, strict=True):
                        if dk is None:
                            spread.append(ast.keyword(arg=None, value=dv))
                        else:
                            okk, key = literal(dk)
                            if okk and isinstance(key, str):
                                spread.append(ast.keyword(arg=key, value=dv))
                else:
                    spread.append(k)
            explicit = ast.Call(
                func=node.func, args=[], keywords=[k for k in spread if k.arg is not None]
            )
            for k in spread:
                if (
                    k.arg is None
                    and isinstance(k.value, ast.Subscript)
                    and isinstance(k.value.value, ast.Name)
                ):
                    var = k.value.value.id
                    ok, fname = literal(k.value.slice)
                    if var in kwargs_vars and ok:
                        kw = from_field(kwargs_vars[var], fname)
                        kw.update(overrides.get((var, fname), {}))
                elif k.arg is None and isinstance(k.value, ast.Name) and k.value.id in field_vars:
                    kw = from_field(*field_vars[k.value.id])
            exp = explicit_kwargs(explicit, {}, None)
            if "default" in exp and "default_not_static" not in exp:
                if "default" in kw and kw["default"] != exp["default"]:
                    exp["config_default"] = kw["default"]
                kw.pop("default_not_static", None)
            kw.update(exp)
            if "nargs" in kw and kw.get("action") == "BooleanOptionalAction":
                kw.pop("nargs")
            add(options, kw, where(path, node), conds, group)

    arg_utils = "vllm/engine/arg_utils.py"
    tree = src.tree(arg_utils)
    for cls_name in ("EngineArgs", "AsyncEngineArgs"):
        cls = top_level(tree, cls_name)
        assert isinstance(cls, ast.ClassDef)
        fn = next(
            s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "add_cli_args"
        )
        walk_add_cli_args(arg_utils, fn, cls_name)
        notes[f"{cls_name}.add_cli_args"] = where(arg_utils, fn)

    cli_args = "vllm/entrypoints/common/cli_args.py"
    ctree = src.tree(cli_args)
    mk = top_level(ctree, "make_arg_parser")
    assert isinstance(mk, ast.FunctionDef)
    walk_add_cli_args(cli_args, mk, "serve")
    notes["make_arg_parser"] = where(cli_args, mk)
    # FrontendArgs: one flag per dataclass field, "--" + name with "_" -> "-" (add_cli_args loop)
    base = top_level(ctree, "BaseFrontendArgs")
    assert isinstance(base, ast.ClassDef)
    loop_src = where(
        cli_args,
        next(s for s in base.body if isinstance(s, ast.FunctionDef) and s.name == "add_cli_args"),
    )
    notes["FrontendArgs.add_cli_args"] = loop_src
    fe_overrides: dict[str, Json] = {}
    for cname in ("BaseFrontendArgs", "FrontendArgs"):
        c = top_level(ctree, cname)
        assert isinstance(c, ast.ClassDef)
        cust = next(
            (
                s
                for s in c.body
                if isinstance(s, ast.FunctionDef) and s.name == "_customize_cli_kwargs"
            ),
            None,
        )
        for sub in ast.walk(cust) if cust else ():
            if isinstance(sub, ast.Assign) and isinstance(sub.targets[0], ast.Subscript):
                t = sub.targets[0]
                if isinstance(t.value, ast.Subscript):
                    okf, fname = literal(t.value.slice)
                    okk, key = literal(t.slice)
                    if okf and okk and key not in {"help", "metavar"}:
                        okv, val = literal(sub.value)
                        fe_overrides.setdefault(fname, {})[key] = (
                            val if okv else ast.unparse(sub.value)[:60]
                        )
            if isinstance(sub, ast.Delete):
                for t in sub.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Subscript):
                        okf, fname = literal(t.value.slice)
                        okk, key = literal(t.slice)
                        if okf and okk:
                            fe_overrides.setdefault(fname, {})[f"-{key}"] = True
    for fname in classes.fields("FrontendArgs"):
        kw = from_field("FrontendArgs", fname)
        for k, v in fe_overrides.get(fname, {}).items():
            if k.startswith("-"):
                kw.pop(k[1:], None)
            else:
                kw[k] = v
        add([f"--{fname.replace('_', '-')}"], kw, loop_src, [], "Frontend")
    return flags, notes


# --------------------------------------------------------------------------------------------
# protocol: error body, stream chunks, priority


def model_fields(src: Source, path: str, cls: str) -> Json:
    node = top_level(src.tree(path), cls)
    assert isinstance(node, ast.ClassDef), (path, cls)
    fields_: list[Json] = []
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            f: Json = {
                "name": stmt.target.id,
                "type": ast.unparse(stmt.annotation)[:120],
                "source": where(path, stmt),
            }
            if stmt.value is None:
                f["required"] = True
            else:
                ok, val = field_default(stmt, path)
                if ok:
                    f["default"] = val
                else:
                    f["default_not_static"] = val
                if isinstance(stmt.value, ast.Call):
                    for key in ("alias", "exclude", "deprecated"):
                        okk, kv = literal(kwarg(stmt.value, key))
                        if okk:
                            f[key] = kv
            fields_.append(f)
    return {
        "class": cls,
        "bases": [ast.unparse(b) for b in node.bases],
        "source": where(path, node),
        "fields": fields_,
    }


def error_types(src: Source) -> Json:
    path = "vllm/entrypoints/serve/exception_handling/error_response.py"
    fn = top_level(src.tree(path), "create_error_response")
    assert isinstance(fn, ast.FunctionDef)
    pairs: list[Json] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.If):
            body_types: list[str] = []
            status = None
            for stmt in node.body:
                for sub in [stmt]:
                    if isinstance(sub, ast.Assign) and isinstance(sub.targets[0], ast.Name):
                        tid = sub.targets[0].id
                        if tid == "err_type":
                            if isinstance(sub.value, ast.IfExp):
                                body_types += [
                                    v
                                    for v in (
                                        literal(sub.value.body)[1],
                                        literal(sub.value.orelse)[1],
                                    )
                                    if isinstance(v, str)
                                ]
                            else:
                                ok, v = literal(sub.value)
                                body_types.append(v if ok else f"<{ast.unparse(sub.value)[:50]}>")
                        if tid == "status_code":
                            status = ast.unparse(sub.value)
            if body_types:
                pairs.append(
                    {
                        "when": ast.unparse(node.test)[:80],
                        "type": body_types,
                        "status": status,
                        "source": where(path, node),
                    }
                )
        if isinstance(node, ast.If) and node.orelse and not isinstance(node.orelse[0], ast.If):
            for stmt in node.orelse:
                if (
                    isinstance(stmt, ast.Assign)
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == "err_type"
                ):
                    pairs.append(
                        {
                            "when": "any other exception",
                            "type": [literal(stmt.value)[1]],
                            "status": "HTTPStatus.INTERNAL_SERVER_ERROR",
                            "source": where(path, stmt),
                        }
                    )
    default_type = literal(fn.args.defaults[0])[1] if fn.args.defaults else None
    status_map = {
        "BAD_REQUEST": 400,
        "NOT_FOUND": 404,
        "UNPROCESSABLE_ENTITY": 422,
        "INTERNAL_SERVER_ERROR": 500,
        "NOT_IMPLEMENTED": 501,
        "SERVICE_UNAVAILABLE": 503,
    }
    for p in pairs:
        s = p["status"] or ""
        code = next((c for k, c in status_map.items() if s.endswith(k)), None)
        p["code"] = code if code is not None else f"<{s}>"
    handlers = []
    hdir = "vllm/entrypoints/serve/exception_handling/handlers/"
    for hp in sorted(f for f in src.files if f.startswith(hdir)):
        for node in ast.walk(src.tree(hp)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ErrorInfo"
            ):
                t = kwarg(node, "type")
                handlers.append(
                    {"type": ast.unparse(t) if t is not None else None, "source": where(hp, node)}
                )
    # the status a GenerationError carries (vllm/exceptions.py: self.status_code = HTTPStatus.X)
    exc_path = "vllm/exceptions.py"
    exc_status: dict[str, int] = {}
    for node in src.tree(exc_path).body:
        if isinstance(node, ast.ClassDef):
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Assign)
                    and ast.unparse(sub.targets[0]) == "self.status_code"
                ):
                    code = next(
                        (c for k, c in status_map.items() if ast.unparse(sub.value).endswith(k)),
                        None,
                    )
                    if code is not None:
                        exc_status[node.name] = code
    by_status: dict[str, list[str]] = {}
    for p in pairs:
        codes: list[Any] = [p["code"]]
        if p["when"] == "isinstance(exc, GenerationError)":
            codes = [exc_status.get("RetryableRequestError"), exc_status.get("GenerationError")]
            p["code"] = codes
            p["code_source"] = exc_path
        for t, c in zip(
            p["type"], codes * (len(p["type"]) if len(codes) == 1 else 1), strict=False
        ):
            if isinstance(c, int) and not t.startswith("<"):
                by_status.setdefault(str(c), [])
                if t not in by_status[str(c)]:
                    by_status[str(c)].append(t)
    return {
        "by_status": by_status,
        "by_status_note": "create_error_response's err_type per status; FastAPI's own HTTPException and "
        "request-validation handlers use the status phrase instead ('Not Found', 'Bad Request')",
        "create_error_response": {
            "source": where(path, fn),
            "default_type": default_type,
            "mapping": pairs,
        },
        "framework_handlers": handlers,
        "framework_handlers_note": "type is the HTTP status phrase (e.g. 'Bad Request', 'Not Found') in these handlers",
    }


def protocol(src: Source) -> Json:
    eng = "vllm/entrypoints/serve/engine/protocol.py"
    gen = "vllm/entrypoints/generate/base/protocol.py"
    chat = "vllm/entrypoints/openai/chat_completion/protocol.py"
    comp = "vllm/entrypoints/openai/completion/protocol.py"
    models = {
        name: model_fields(src, path, name)
        for path, name in [
            (eng, "ErrorInfo"),
            (eng, "ErrorResponse"),
            (eng, "UsageInfo"),
            (gen, "StreamOptions"),
            (gen, "DeltaMessage"),
            (chat, "ChatCompletionResponseStreamChoice"),
            (chat, "ChatCompletionStreamResponse"),
            (comp, "CompletionResponseStreamChoice"),
            (comp, "CompletionStreamResponse"),
        ]
    }
    for path, name in [(chat, "ChatCompletionRequest"), (comp, "CompletionRequest")]:
        full = model_fields(src, path, name)
        keep = {
            "priority",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "ignore_eos",
            "min_tokens",
            "request_id",
            "n",
        }
        full["fields"] = [f for f in full["fields"] if f["name"] in keep]
        full["note"] = "only the fields PolyServe uses are listed"
        models[name] = full
    # the priority header, and whether anything rejects a non-zero priority under fcfs
    serving = "vllm/entrypoints/generate/base/serving.py"
    ok, header = module_constant(src, serving, "PRIORITY_HEADER")
    hdr_node = top_level(src.tree(serving), "PRIORITY_HEADER")
    get_prio = None
    for node in ast.walk(src.tree(serving)):
        if isinstance(node, ast.FunctionDef) and node.name == "_get_priority":
            get_prio = node
    callers = []
    for p in sorted(src.files):
        if p.startswith("vllm/entrypoints/") and "_get_priority(" in src.text(p):
            for node in ast.walk(src.tree(p)):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "_get_priority"
                ):
                    callers.append(where(p, node))
    rejections = []
    for p in sorted(src.files):
        if not p.startswith(
            ("vllm/v1/engine/", "vllm/v1/core/", "vllm/entrypoints/", "vllm/engine/")
        ):
            continue
        for node in ast.walk(src.tree(p)):
            if (
                isinstance(node, ast.Raise)
                and node.exc is not None
                and "priority" in ast.unparse(node.exc).lower()
            ):
                rejections.append(where(p, node))
    sched_cfg = "vllm/config/scheduler.py"
    policy_alias = top_level(src.tree(sched_cfg), "SchedulerPolicy")
    queue = "vllm/v1/core/sched/request_queue.py"
    cq = top_level(src.tree(queue), "create_request_queue")
    chat_rc = [
        where(chat, n)
        for n in ast.walk(src.tree(chat))
        if isinstance(n, ast.Constant) and n.value == "reasoning_content"
    ]
    delta_names = {f["name"] for f in models["DeltaMessage"]["fields"]}
    delta_cls = top_level(src.tree(gen), "DeltaMessage")
    assert isinstance(delta_cls, ast.ClassDef)
    popped = [
        literal(n.args[0])[1]
        for n in ast.walk(delta_cls)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "pop"
        and n.args
    ]
    models["DeltaMessage"]["serializer_drops_when_empty"] = popped
    models["DeltaMessage"]["has_reasoning"] = "reasoning" in delta_names
    models["DeltaMessage"]["has_reasoning_content"] = "reasoning_content" in delta_names
    models["DeltaMessage"]["reasoning_content_in_chat_protocol"] = chat_rc
    models["DeltaMessage"]["reasoning_content_note"] = (
        "the chat request's input messages have a deprecated reasoning_content key renamed to reasoning"
    )
    usage_default = next(
        f for f in models["StreamOptions"]["fields"] if f["name"] == "include_usage"
    )
    return {
        "models": models,
        "stream_options_include_usage_default": usage_default.get("default"),
        "priority": {
            "header": header if ok else None,
            "header_source": where(serving, hdr_node) if hdr_node else serving,
            "header_rule": "an integer header value wins over the body's priority; a non-integer header is ignored",
            "read_by": where(serving, get_prio) if get_prio else None,
            "callers": callers,
            "policies": literal(policy_alias.value.slice)[1]
            if isinstance(policy_alias, ast.Assign)
            and isinstance(policy_alias.value, ast.Subscript)
            else None,
            "policies_source": where(sched_cfg, policy_alias) if policy_alias else sched_cfg,
            "queue_by_policy": where(queue, cq) if cq else queue,
            "raises_mentioning_priority": rejections,
            "raises_note": "none of these compares a request's priority with the scheduling policy: "
            "they are about list lengths (offline/pooling) and kernel op priorities",
            "fcfs_nonzero_priority": (
                "accepted and ignored: no raise in vllm/v1/engine, vllm/v1/core, vllm/engine or "
                "vllm/entrypoints rejects a request's priority; the fcfs queue orders by arrival only "
                "(the request models' field description says otherwise)"
                if not [r for r in rejections if "/v1/" in r or "/serving" in r]
                else "see raises_mentioning_priority"
            ),
        },
        "errors": error_types(src),
    }


# --------------------------------------------------------------------------------------------


def download(version: str) -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE_DIR.glob(f"vllm-{version}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                f"vllm=={version}",
                "-d",
                str(CACHE_DIR),
            ],
            check=True,
        )
        found = sorted(CACHE_DIR.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no vllm-{version} wheel in {CACHE_DIR}")
    return found[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(wheel: Path) -> Json:
    src = Source(wheel)
    _SRC[:] = [src]
    version = src.version()
    mets, declared = metrics(src)
    rts, app_src = routes(src)
    flags, cli_src = cli(src)
    old_kv = "vllm:gpu_cache_usage_perc"
    old_kv_hits = [p for p in sorted(src.files) if "gpu_cache_usage" in src.text(p)]
    return {
        "about": {
            "what": f"Facts (names, types, numbers, file:line) read from the vLLM {version} wheel's Python sources",
            "wheel": wheel.name,
            "wheel_sha256": sha256(wheel),
            "licence": "vLLM is Apache-2.0 (https://github.com/vllm-project/vllm); no vLLM code or prose is copied here",
            "generator": "tools/vllm_surface/extract.py (ast only; vLLM is never imported)",
            "regenerate": f"python tools/vllm_surface/extract.py --version {version}",
            "sources": "file:line refer to paths inside the wheel",
        },
        "version": version,
        "metrics": mets,
        "metrics_declared_elsewhere": declared,
        "metrics_notes": {
            "engine_labels": ENGINE_LABELS,
            "engine_label_value": "str(engine index), one label set per data-parallel engine (loggers.py PrometheusStatLogger)",
            "counter_exposition": "prometheus_client exposes a counter as <name>_total (a trailing _total in the name is not doubled)",
            old_kv: old_kv_hits or "absent: no .py file in the wheel mentions gpu_cache_usage",
        },
        "routes": rts,
        "routes_root": app_src,
        "routes_note": "FastAPI adds /openapi.json, /docs and /redoc itself unless --disable-fastapi-docs "
        "(build_app); endpoint plugins (attach_endpoint_plugins) may add more",
        "cli": flags,
        "cli_sources": cli_src,
        "protocol": protocol(src),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="a vllm wheel (default: pip download into a cache)")
    ap.add_argument("--version", default=VERSION)
    ap.add_argument(
        "--out",
        type=Path,
        help="output file (default: polyserve/wire/vllm_surface/vllm-<version>.json)",
    )
    args = ap.parse_args(argv)
    wheel = args.wheel or download(args.version)
    data = extract(wheel)
    if data["version"] != args.version and args.wheel is None:
        raise SystemExit(f"wheel is {data['version']}, wanted {args.version}")
    out = args.out or DEFAULT_OUT_DIR / f"vllm-{data['version']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False) + "\n")
    n_eng = sum(1 for m in data["metrics"] if m.get("scope") == "engine")
    print(
        f"{out}: {len(data['metrics'])} metrics ({n_eng} engine), {len(data['routes'])} routes, "
        f"{len(data['cli'])} CLI flags",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
