"""FHIRPath value extraction for search indexing.

Every write indexes the values of each applicable SearchParameter ``expression``. Nearly all R4
expressions are plain navigation paths with a few filters, so they are compiled here into closures
over precomputed key lists, typed from the StructureDefinitions shipped in ``fhir/data``. Anything
outside that subset (and any resource the compiled form cannot handle) goes through fhirpathpy,
which is complete but roughly two orders of magnitude slower.

Compiled extractors follow FHIRPath semantics for the subset: collections flatten at each step, a
top-level ``|`` removes duplicates, choice elements (``Observation.value``) expand to their typed
JSON keys (``valueQuantity``...), ``ofType``/``as`` filter by type including subtypes.

``resolve() is X`` cannot load resources at index time; it is answered from the reference itself
(see :func:`reference_target_type`) in both the compiled and the fhirpathpy paths.
"""

from __future__ import annotations

import contextvars
import functools
import gzip
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import FP_Type, ResourceNode, TypeInfo
from fhirpathpy.models import models as _fhirpath_models

__all__ = [
    "Extractor",
    "Typed",
    "compile_expression",
    "fallback_extractor",
    "is_fast",
    "reference_target_type",
]

log = logging.getLogger(__name__)

_DATA_DIR = Path(__file__).resolve().parent / "data"
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
# Elements typed ``Resource`` (contained, Bundle.entry.resource) take their type from the value.
_DYNAMIC = "Resource"
# FHIRPath System types, and the FHIR primitives each one stands for when used in ofType()/as.
_SYSTEM_TO_FHIR = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}


@dataclass(frozen=True, slots=True)
class Typed:
    """One extracted value with its FHIR type, so the indexer need not guess from the JSON shape.

    ``type`` is a FHIR type name (``CodeableConcept``, ``dateTime``...), the element path for
    backbone elements (``Observation.component``, usable again as ``resource_type`` in
    :func:`compile_expression`), or ``None`` when fhirpathpy could not tell.
    ``value`` is the resource's own JSON object (no copy is made on the fast path): treat it as
    read-only.
    """

    value: Any
    type: str | None


Extractor = Callable[[dict[str, Any]], list[Typed]]
_Run = Callable[[dict[str, Any]], list[Typed]]
_Op = Callable[[list[Any], dict[str, Any]], list[Any]]


class _Unsupported(Exception):
    """The expression (part) is outside the natively compiled subset."""


# --------------------------------------------------------------------------------------------------
# Type model from the StructureDefinitions
# --------------------------------------------------------------------------------------------------


class _Model:
    """Element names, JSON keys and types of every R4 resource, datatype and backbone element.

    Type keys are FHIR type names, or element paths for backbone elements (``Patient.contact``),
    which is also how ``contentReference`` targets are named.
    """

    def __init__(self, bundles: list[dict[str, Any]]) -> None:
        self.parents: dict[str, str] = {}
        # type key -> FHIRPath element name -> ((JSON key, type key), ...) in declaration order
        self.children: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {}
        self.primitives: set[str] = set()
        resources: set[str] = set()
        constraints: dict[str, str] = {}
        for bundle in bundles:
            for entry in bundle.get("entry", ()):
                sd = entry.get("resource") or {}
                kind = sd.get("kind")
                if sd.get("resourceType") != "StructureDefinition" or kind not in (
                    "resource",
                    "complex-type",
                    "primitive-type",
                ):
                    continue
                base = sd.get("baseDefinition")
                parent = base.rsplit("/", 1)[-1] if base else None
                if sd.get("derivation") == "constraint":
                    if parent:
                        constraints[sd["id"]] = parent
                    continue
                name = sd["type"]
                if parent:
                    self.parents[name] = parent
                self.children.setdefault(name, {})
                if kind == "primitive-type":
                    self.primitives.add(name)
                    continue
                if kind == "resource" and not sd.get("abstract"):
                    resources.add(name)
                for el in sd.get("snapshot", {}).get("element", ())[1:]:
                    self._add_element(name, kind, el)
        for name, parent in constraints.items():  # SimpleQuantity, MoneyQuantity
            self.parents[name] = parent
            self.children[name] = self.children.get(parent, {})
        self.resources = frozenset(resources)

    def _add_element(self, sd_type: str, kind: str, el: dict[str, Any]) -> None:
        path: str = el["path"]
        owner, _, name = path.rpartition(".")
        if el.get("max") == "0":
            return
        ref = el.get("contentReference")
        entries: list[tuple[str, str]] = []
        if ref:
            entries.append((name, ref.rpartition("#")[2]))
        elif name.endswith("[x]"):
            name = name[:-3]
            for t in el.get("type", ()):
                code = t["code"]
                entries.append((name + code[0].upper() + code[1:], self._type_key(sd_type, kind, path, t)))
        else:
            entries.extend((name, self._type_key(sd_type, kind, path, t)) for t in el.get("type", ()))
        if entries:
            self.children.setdefault(owner, {})[name] = tuple(entries)

    def _type_key(self, sd_type: str, kind: str, path: str, t: dict[str, Any]) -> str:
        code: str = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            for ext in t.get("extension", ()):
                if ext.get("url") == _FHIR_TYPE_EXT:
                    code = ext["valueUrl"]
                    break
            else:
                code = _SYSTEM_TO_FHIR.get(code.rpartition(".")[2], "string")
            if kind == "resource" and path == f"{sd_type}.id":
                code = "id"  # R4 snapshots say System.String; the spec's type is id
        elif code in ("BackboneElement", "Element"):
            self.parents[path] = code
            return path
        elif code == "Quantity":
            for profile in t.get("profile", ()):
                if profile.endswith("/SimpleQuantity"):
                    return "SimpleQuantity"
        return code

    def is_a(self, type_key: str | None, base: str) -> bool:
        """FHIRPath ``is``: the type itself or any of its ancestors."""
        while type_key:
            if type_key == base:
                return True
            type_key = self.parents.get(type_key)
        return False

    def is_type_name(self, name: str) -> bool:
        return name in self.children or name in self.parents

    def type_matcher(self, spec: str) -> Callable[[str], bool]:
        """Predicate over type keys for an ofType()/as/is type specifier."""
        namespace, _, name = spec.rpartition(".")
        if namespace not in ("", "FHIR", "System"):
            raise _Unsupported(f"type specifier {spec}")
        if namespace != "System" and self.is_type_name(name):
            return lambda t: self.is_a(t, name)
        if name in _SYSTEM_TO_FHIR:  # System.DateTime / DateTime: the FHIR primitive family
            fhir = _SYSTEM_TO_FHIR[name]
            return lambda t: self.is_a(t, fhir) or (fhir == "dateTime" and t == "instant")
        return lambda t: False


@functools.cache
def _model() -> _Model:
    bundles = []
    for name in ("profiles-types.json.gz", "profiles-resources.json.gz"):
        with gzip.open(_DATA_DIR / name, "rt", encoding="utf-8") as fh:
            bundles.append(json.load(fh))
    return _Model(bundles)


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


def reference_target_type(ref: Any, root: dict[str, Any] | None = None) -> str | None:
    """Resource type a Reference points at, as far as it can be known without fetching it.

    Literal references give it (``Patient/1``, ``http://x/fhir/Patient/1/_history/2``, conditional
    ``Patient?identifier=...``); ``#id`` looks into ``root.contained``; otherwise (``urn:uuid:``,
    identifier-only) ``Reference.type`` is used when present. ``None`` means unknown.
    """
    if type(ref) is not dict:
        return None
    s = ref.get("reference")
    if type(s) is str and s:
        if s[0] == "#":
            if root is not None:
                if len(s) == 1:
                    rt = root.get("resourceType")
                    return rt if type(rt) is str else None
                for c in root.get("contained") or ():
                    if type(c) is dict and c.get("id") == s[1:]:
                        rt = c.get("resourceType")
                        return rt if type(rt) is str else None
        elif not s.startswith("urn:"):
            q = s.find("?")
            if q >= 0:
                candidate = s[:q].rpartition("/")[2]
            else:
                segs = s.split("/")
                n = len(segs)
                if n >= 4 and segs[-2] == "_history":
                    candidate = segs[-4] if segs[-3] else ""
                elif n >= 2 and segs[-1]:
                    candidate = segs[-2]
                else:
                    candidate = ""
            if candidate in _model().resources:
                return candidate
    t = ref.get("type")
    if type(t) is str:
        t = t.rpartition("/")[2]
        if t in _model().resources:
            return t
    return None


# --------------------------------------------------------------------------------------------------
# Tokenising, splitting into union parts, parsing
# --------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*')
       |(?P<num>\d+(?:\.\d+)?)
       |(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
       |(?P<op>!=|!~|<=|>=|[.()\[\]{}|=<>~+\-*/&,%$])
    )""",
    re.VERBOSE,
)
# Operators binding looser than '|': a top-level '|' next to them is not a union of paths.
_LOOSE_OPS = frozenset({"=", "!=", "~", "!~", "<", ">", "<=", ">="})
_LOOSE_WORDS = frozenset({"and", "or", "xor", "implies", "in", "contains"})
_BINARY_PREC = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # 'str' | 'num' | 'id' | 'op'
    text: str
    start: int
    end: int


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    n = len(expr)
    while pos < n:
        m = _TOKEN_RE.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise _Unsupported(f"cannot tokenise at {pos}: {expr!r}")
        kind = m.lastgroup or "op"
        text = m.group(kind)
        tokens.append(_Token(kind, text, m.start(kind), m.end(kind)))
        pos = m.end()
    return tokens


@dataclass(frozen=True, slots=True)
class _Part:
    text: str
    tokens: tuple[_Token, ...]  # offsets relative to ``text``
    root: str | None  # leading identifier, '%'/'$' for variables, None if something else
    root_index: int  # index of the root token in ``tokens``


def _make_part(expr: str, tokens: list[_Token]) -> _Part:
    base = tokens[0].start
    text = expr[base : tokens[-1].end]
    rel = tuple(_Token(t.kind, t.text, t.start - base, t.end - base) for t in tokens)
    i = 0
    while i < len(rel) and rel[i].text == "(":
        i += 1
    root: str | None = None
    if i < len(rel):
        tok = rel[i]
        if tok.kind == "id":
            root = tok.text.strip("`")
        elif tok.text in ("%", "$"):
            root = tok.text
    return _Part(text, rel, root, i)


def _split_union(expr: str) -> tuple[list[_Part], bool]:
    """Top-level ``|`` parts of ``expr`` and whether there was a union at all."""
    tokens = _tokenize(expr)
    if not tokens:
        return [], False
    groups: list[list[_Token]] = [[]]
    depth = 0
    loose = False
    prev: _Token | None = None
    for tok in tokens:
        if tok.kind == "op" and tok.text in "([{":
            depth += 1
        elif tok.kind == "op" and tok.text in ")]}":
            depth -= 1
        elif depth == 0:
            if tok.kind == "op" and tok.text == "|":
                groups.append([])
                prev = tok
                continue
            if (tok.kind == "op" and tok.text in _LOOSE_OPS) or (
                tok.kind == "id" and tok.text in _LOOSE_WORDS and not (prev and prev.text == ".")
            ):
                loose = True
        groups[-1].append(tok)
        prev = tok
    if loose or len(groups) == 1 or any(not g for g in groups):
        return [_make_part(expr, tokens)], False
    return [_make_part(expr, g) for g in groups], True


# AST nodes are tuples: ('id', name) ('call', name, args) ('dot', left, right) ('index', left, expr)
# ('bin', op, left, right) ('type', op, left, spec) ('lit', value) ('var', name) ('empty',)
_Node = tuple[Any, ...]


class _Parser:
    def __init__(self, tokens: tuple[_Token, ...]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, text: str | None = None) -> _Token:
        tok = self.peek()
        if tok is None or (text is not None and tok.text != text):
            raise _Unsupported(f"expected {text!r}")
        self.pos += 1
        return tok

    def parse(self) -> _Node:
        node = self.expr(0)
        if self.peek() is not None:
            raise _Unsupported("trailing tokens")
        return node

    def expr(self, min_prec: int) -> _Node:
        left = self.postfix(self.primary())
        while True:
            tok = self.peek()
            if tok is None or tok.kind not in ("op", "id"):
                return left
            prec = _BINARY_PREC.get(tok.text)
            if prec is None or prec <= min_prec:
                return left
            self.pos += 1
            if tok.text in ("is", "as"):
                left = ("type", tok.text, left, self.type_spec())
            else:
                left = ("bin", tok.text, left, self.expr(prec))

    def type_spec(self) -> str:
        names = [self.take().text.strip("`")]
        while (tok := self.peek()) is not None and tok.text == ".":
            self.pos += 1
            names.append(self.take().text.strip("`"))
        return ".".join(names)

    def primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "str":
            return ("lit", _unquote(tok.text))
        if tok.kind == "num":
            return ("lit", float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "id":
            if tok.text in ("true", "false"):
                return ("lit", tok.text == "true")
            return self.member(tok)
        if tok.text == "(":
            node = self.expr(0)
            self.take(")")
            return node
        if tok.text == "{":
            self.take("}")
            return ("empty",)
        if tok.text in ("%", "$"):
            return ("var", tok.text + self.take().text)
        raise _Unsupported(f"unexpected {tok.text!r}")

    def member(self, tok: _Token) -> _Node:
        if tok.kind != "id":
            raise _Unsupported(f"expected a name, got {tok.text!r}")
        name = tok.text.strip("`")
        nxt = self.peek()
        if nxt is not None and nxt.text == "(" and not tok.text.startswith("`"):
            self.pos += 1
            args: list[_Node] = []
            if (close := self.peek()) is not None and close.text == ")":
                self.pos += 1
                return ("call", name, args)
            while True:
                args.append(self.expr(0))
                if self.take().text == ")":
                    return ("call", name, args)
        return ("id", name)

    def postfix(self, node: _Node) -> _Node:
        while (tok := self.peek()) is not None:
            if tok.text == ".":
                self.pos += 1
                node = ("dot", node, self.member(self.take()))
            elif tok.text == "[":
                self.pos += 1
                node = ("index", node, self.expr(0))
                self.take("]")
            else:
                break
        return node


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body
    escapes = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(escapes.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Planning: which parts apply to a type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    parts: tuple[_Part, ...]  # the parts that apply to the context type
    union: bool  # the original expression had a top-level union (so results are de-duplicated)
    whole: bool  # splitting was not possible; ``parts`` is the whole expression


def _applies(part: _Part, context: str) -> bool:
    root = part.root
    if root is None or root in ("%", "$"):
        return True
    model = _model()
    if root[0].isupper() and (model.is_type_name(root) or root == context):
        return model.is_a(context, root) or root == context
    return True  # an element name, evaluated relative to the context


@functools.cache
def _plan(expression: str, context: str) -> _Plan:
    try:
        parts, union = _split_union(expression)
    except _Unsupported:
        return _Plan((_Part(expression, (), None, 0),), False, True)
    return _Plan(tuple(p for p in parts if _applies(p, context)), union, False)


# --------------------------------------------------------------------------------------------------
# Native compilation
# --------------------------------------------------------------------------------------------------


def _flatten(node: _Node) -> list[_Node]:
    """A path expression as a flat list of steps: ('member', name) first, then invocations."""
    kind = node[0]
    if kind == "id":
        return [("member", node[1])]
    if kind == "dot":
        left = _flatten(node[1])
        right = node[2]
        if right[0] == "id":
            return [*left, ("nav", right[1])]
        return [*left, right]  # ('call', name, args)
    if kind == "index":
        idx = node[2]
        if idx[0] != "lit" or type(idx[1]) is not int or idx[1] < 0:
            raise _Unsupported("index")
        return [*_flatten(node[1]), ("index", idx[1])]
    if kind == "type" and node[1] == "as":
        return [*_flatten(node[2]), ("oftype", node[3])]
    raise _Unsupported(f"node {kind}")


def _type_arg(args: list[_Node]) -> str:
    if len(args) != 1:
        raise _Unsupported("type argument")
    node = args[0]
    if node[0] == "id":
        return str(node[1])
    if node[0] == "dot" and node[1][0] == "id" and node[2][0] == "id":
        return f"{node[1][1]}.{node[2][1]}"
    raise _Unsupported("type argument")


_STRINGY = frozenset({"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"})


class _Compiler:
    """Turns one union part into a runtime function, tracking static types step by step.

    The collection is a plain list of values while its static type is a single type key ("mono")
    and a list of ``(value, type_key)`` pairs after a choice element fans out ("poly").
    """

    def __init__(self, context: str) -> None:
        self.model = _model()
        self.context = context
        self.types: tuple[str, ...] = (context,)
        self.ops: list[tuple[str, Any]] = []  # ('path', keys) or ('op', _Op)
        self.pending: dict[str, tuple[tuple[str, str], ...]] | None = None
        self.empty = False

    @property
    def mono(self) -> bool:
        return len(self.types) == 1

    def compile(self, node: _Node, recover: _Run) -> _Run | None:
        """The part's function, or None when it can never yield anything for this context.

        ``recover`` answers instead when the data defeats the compiled form (malformed JSON).
        """
        steps = _flatten(node)
        first = steps[0]
        name = first[1]
        if name[0].isupper() and (self.model.is_type_name(name) or name == self.context):
            if not (self.model.is_a(self.context, name) or name == self.context):
                return None
        else:
            self.nav(name)
        for step in steps[1:]:
            self.step(step)
            if self.empty:
                return None
        self.flush()
        if self.empty:
            return None
        return self.build(recover)

    # -- static steps ------------------------------------------------------------------------------

    def step(self, step: _Node) -> None:
        kind = step[0]
        if kind == "nav":
            self.flush()
            self.nav(step[1])
        elif kind == "index":
            self.flush()
            n = step[1]
            self.ops.append(("op", lambda cur, root: cur[n : n + 1]))
        elif kind == "oftype":
            self.of_type(step[1])
        elif kind == "call":
            fn, args = step[1], step[2]
            if fn in ("ofType", "as"):
                self.of_type(_type_arg(args))
            elif fn == "where" and len(args) == 1:
                self.flush()
                self.where(args[0])
            else:
                raise _Unsupported(f"function {fn}")
        else:
            raise _Unsupported(f"step {kind}")

    def nav(self, name: str) -> None:
        table: dict[str, tuple[tuple[str, str], ...]] = {}
        for t in self.types:
            if t == _DYNAMIC or t in self.model.primitives:
                raise _Unsupported(f"navigation into {t}")
            entries = self.model.children.get(t, {}).get(name)
            if entries:
                table[t] = entries
        if not table:
            raise _Unsupported(f"no element {name} on {self.types}")
        self.pending = table

    def of_type(self, spec: str) -> None:
        match = self.model.type_matcher(spec)
        if self.pending is not None:
            self.pending = {
                t: tuple(e for e in entries if match(e[1])) for t, entries in self.pending.items()
            }
            return
        if _DYNAMIC in self.types:
            raise _Unsupported("ofType on Resource")
        kept = tuple(t for t in self.types if match(t))
        if not kept:
            self.empty = True
        elif kept != self.types:
            allowed = frozenset(kept)
            if len(kept) == 1:
                self.ops.append(("op", lambda cur, root: [v for v, t in cur if t in allowed]))
            else:
                self.ops.append(("op", lambda cur, root: [p for p in cur if p[1] in allowed]))
            self.types = kept

    def flush(self) -> None:
        """Emit the pending navigation, now that any ofType() right after it has narrowed it."""
        table = self.pending
        if table is None:
            return
        self.pending = None
        out: list[str] = []
        for entries in table.values():
            for _, rt in entries:
                if rt not in out:
                    out.append(rt)
        if not out:
            self.empty = True
            return
        if self.mono:
            entries = table.get(self.types[0], ())
            if len(entries) == 1:
                self.ops.append(("path", entries[0][0]))
            elif len(out) == 1:
                self.ops.append(("op", _mono_multi_nav(tuple(k for k, _ in entries))))
            else:
                self.ops.append(("op", _choice_nav(entries)))
        else:
            self.ops.append(("op", _poly_nav(table, len(out) == 1)))
        self.types = tuple(out)

    def where(self, cond: _Node) -> None:
        mono = self.mono
        if cond[0] == "type" and cond[1] == "is" and cond[2] == ("call", "resolve", []):
            if self.types != ("Reference",):
                raise _Unsupported("resolve() on a non-Reference")
            match = self.model.type_matcher(cond[3])
            allowed = frozenset(t for t in self.model.resources if match(t))
            if not allowed:
                self.empty = True
                return
            self.ops.append(("op", _where_resolve(allowed)))
            return
        if cond[0] == "bin" and cond[1] == "=":
            left, right = cond[2], cond[3]
            if left[0] == "lit":
                left, right = right, left
            if left[0] == "id" and right[0] == "lit":
                key = self._primitive_child(left[1], right[1])
                self.ops.append(("op", _where_eq(key, right[1], mono)))
                return
        raise _Unsupported("where() condition")

    def _primitive_child(self, name: str, literal: Any) -> str:
        """JSON key of child ``name`` if comparing it with ``literal`` is plain JSON equality."""
        keys = set()
        for t in self.types:
            if t == _DYNAMIC:
                raise _Unsupported("where() on Resource")
            entries = self.model.children.get(t, {}).get(name)
            if entries is None or len(entries) != 1:
                raise _Unsupported(f"where() on {name}")
            key, ct = entries[0]
            if type(literal) is str:
                ok = any(self.model.is_a(ct, s) for s in _STRINGY)
            elif type(literal) is bool:
                ok = ct == "boolean"
            else:
                ok = ct in ("integer", "positiveInt", "unsignedInt", "decimal")
            if not ok:
                raise _Unsupported(f"where({name} = literal) on {ct}")
            keys.add(key)
        if len(keys) != 1:
            raise _Unsupported("where() child key")
        return keys.pop()

    # -- runtime -----------------------------------------------------------------------------------

    def build(self, recover: _Run) -> _Run:
        ops: list[_Op] = []
        keys: list[str] = []
        for kind, arg in self.ops:
            if kind == "path":
                keys.append(arg)
                continue
            if keys:
                ops.append(_path_op(tuple(keys)))
                keys = []
            ops.append(arg)
        t = self.types[0] if self.mono else None
        if not ops and keys and t is not None and t != _DYNAMIC:
            return _path_run(tuple(keys), t, recover)
        if keys:
            ops.append(_path_op(tuple(keys)))
        return _ops_run(tuple(ops), _finisher(self.types, self.mono), recover)


def _path_op(keys: tuple[str, ...]) -> _Op:
    def op(cur: list[Any], root: dict[str, Any]) -> list[Any]:
        for k in keys:
            nxt: list[Any] = []
            for v in cur:
                x = v.get(k)
                if x is not None:
                    if type(x) is list:
                        nxt.extend(x)
                    else:
                        nxt.append(x)
            if not nxt:
                return nxt
            cur = nxt
        return cur

    return op


def _mono_multi_nav(keys: tuple[str, ...]) -> _Op:
    """Choice keys that all have the same type (e.g. after ofType(Quantity): Quantity and Age)."""

    def op(cur: list[Any], root: dict[str, Any]) -> list[Any]:
        nxt: list[Any] = []
        for v in cur:
            for k in keys:
                x = v.get(k)
                if x is not None:
                    if type(x) is list:
                        nxt.extend(x)
                    else:
                        nxt.append(x)
        return nxt

    return op


def _choice_nav(entries: tuple[tuple[str, str], ...]) -> _Op:
    def op(cur: list[Any], root: dict[str, Any]) -> list[Any]:
        nxt: list[Any] = []
        for v in cur:
            for k, t in entries:
                x = v.get(k)
                if x is not None:
                    if type(x) is list:
                        nxt.extend([(e, t) for e in x])
                    else:
                        nxt.append((x, t))
        return nxt

    return op


def _poly_nav(table: dict[str, tuple[tuple[str, str], ...]], mono_out: bool) -> _Op:
    def op(cur: list[Any], root: dict[str, Any]) -> list[Any]:
        nxt: list[Any] = []
        for v, vt in cur:
            for k, t in table.get(vt, ()):
                x = v.get(k)
                if x is not None:
                    if mono_out:
                        if type(x) is list:
                            nxt.extend(x)
                        else:
                            nxt.append(x)
                    elif type(x) is list:
                        nxt.extend([(e, t) for e in x])
                    else:
                        nxt.append((x, t))
        return nxt

    return op


def _where_eq(key: str, literal: Any, mono: bool) -> _Op:
    lit_type = type(literal)
    numeric = lit_type in (int, float)

    def test(v: Any) -> bool:
        x = v.get(key)
        if type(x) is list:
            x = x[0] if len(x) == 1 else None
        if numeric:
            return type(x) in (int, float) and x == literal
        return type(x) is lit_type and x == literal

    if mono:
        return lambda cur, root: [v for v in cur if test(v)]
    return lambda cur, root: [p for p in cur if test(p[0])]


def _where_resolve(allowed: frozenset[str]) -> _Op:
    def op(cur: list[Any], root: dict[str, Any]) -> list[Any]:
        return [v for v in cur if reference_target_type(v, root) in allowed]

    return op


def _finisher(types: tuple[str, ...], mono: bool) -> Callable[[list[Any]], list[Typed]]:
    if not mono:
        return lambda cur: [Typed(v, t) for v, t in cur if v is not None]
    t = types[0]
    if t == _DYNAMIC:
        return lambda cur: [
            Typed(v, v.get("resourceType") if type(v) is dict else None) for v in cur if v is not None
        ]
    return lambda cur: [Typed(v, t) for v in cur if v is not None]


def _path_run(keys: tuple[str, ...], t: str, recover: _Run) -> _Run:
    """The common case: a plain dotted path, done in one function with no per-step calls."""
    k0 = keys[0]
    rest = keys[1:]
    if not rest:

        def run1(res: dict[str, Any]) -> list[Typed]:
            try:
                x = res.get(k0)
                if x is None:
                    return []
                if type(x) is list:
                    return [Typed(v, t) for v in x if v is not None]
                return [Typed(x, t)]
            except Exception:
                return recover(res)

        return run1

    def run(res: dict[str, Any]) -> list[Typed]:
        try:
            x = res.get(k0)
            if x is None:
                return []
            cur = x if type(x) is list else [x]
            for k in rest:
                nxt: list[Any] = []
                for v in cur:
                    y = v.get(k)
                    if y is not None:
                        if type(y) is list:
                            nxt.extend(y)
                        else:
                            nxt.append(y)
                if not nxt:
                    return []
                cur = nxt
            return [Typed(v, t) for v in cur if v is not None]
        except Exception:
            return recover(res)

    return run


def _ops_run(ops: tuple[_Op, ...], finish: Callable[[list[Any]], list[Typed]], recover: _Run) -> _Run:
    def run(res: dict[str, Any]) -> list[Typed]:
        try:
            cur: list[Any] = [res]
            for op in ops:
                cur = op(cur, res)
                if not cur:
                    return []
            return finish(cur)
        except Exception:
            return recover(res)

    return run


def _dedup(items: list[Typed]) -> list[Typed]:
    """FHIRPath union de-duplication with fhirpathpy's equality (identical JSON).

    Dicts are compared with ``==`` first, which is cheap and never misses a JSON-identical pair;
    only the rare equal pair is confirmed by serialising (``==`` also equates 1 with 1.0).
    """
    seen: set[Any] = set()
    dicts: list[dict[str, Any]] = []
    out: list[Typed] = []
    for item in items:
        v = item.value
        if type(v) is dict:
            if any(d is v or (d == v and _json_key(d) == _json_key(v)) for d in dicts):
                continue
            dicts.append(v)
        else:
            key = (type(v), v)
            if key in seen:
                continue
            seen.add(key)
        out.append(item)
    return out


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _empty(resource: dict[str, Any]) -> list[Typed]:
    return []


def _native(expression: str, context: str) -> Extractor | None:
    """Compiled extractor, or None when some applicable part is outside the native subset."""
    plan = _plan(expression, context)
    if plan.whole:
        return None
    runs: list[_Run] = []
    try:
        for part in plan.parts:
            run = _Compiler(context).compile(_Parser(part.tokens).parse(), _recovery(part.text, context))
            if run is not None:
                runs.append(run)
    except (_Unsupported, RecursionError) as exc:
        log.debug("fhirpath %r on %s not compiled natively: %s", expression, context, exc)
        return None
    if not runs:
        return _empty
    if len(runs) == 1 and not plan.union:
        return runs[0]
    all_runs = tuple(runs)

    def union(resource: dict[str, Any]) -> list[Typed]:
        out: list[Typed] = []
        for run in all_runs:
            out += run(resource)
        return _dedup(out) if len(out) > 1 else out

    return union


def _recovery(part: str, context: str) -> _Run:
    """fhirpathpy for one part, for data the compiled form cannot walk (e.g. malformed JSON)."""

    def recover(resource: dict[str, Any]) -> list[Typed]:
        log.debug("fhirpath %r on %s: compiled form failed, using fhirpathpy", part, context)
        return fallback_extractor(part, context)(resource)

    return recover


# --------------------------------------------------------------------------------------------------
# fhirpathpy fallback
# --------------------------------------------------------------------------------------------------

_ROOT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("fhirpath_root", default=None)


def _fp_resolve(inputs: list[Any]) -> list[Any]:
    """fhirpathpy has no resolve(); answer it from the reference like the compiled path does."""
    root = _ROOT.get()
    out: list[Any] = []
    for ref in inputs:
        if type(ref) is str:
            ref = {"reference": ref}
        rt = reference_target_type(ref, root)
        if rt is None:
            continue
        target: Any = {"resourceType": rt}
        s = ref.get("reference")
        if root is not None and type(s) is str and s.startswith("#"):
            found = [c for c in root.get("contained") or () if type(c) is dict and c.get("id") == s[1:]]
            target = found[0] if found else (root if s == "#" else target)
        out.append(ResourceNode.create_node(target, rt))
    return out


_FP_OPTIONS = {
    "returnRawData": True,
    "userInvocationTable": {"resolve": {"fn": _fp_resolve, "arity": {0: []}}},
}


def _fallback_text(plan: _Plan, context: str) -> str:
    """The applicable parts, with ``Resource.``/``DomainResource.`` roots made concrete.

    fhirpathpy does not treat a supertype name as matching the root resource, so
    ``Resource.meta.tag`` would yield nothing. A single surviving part of a union keeps the
    union's de-duplication via ``| {}``.
    """
    model = _model()
    texts = []
    for part in plan.parts:
        text = part.text
        root = part.root
        if (
            part.tokens
            and root
            and root != context
            and context in model.resources
            and root[0].isupper()
            and model.is_a(context, root)
        ):
            tok = part.tokens[part.root_index]
            text = text[: tok.start] + context + text[tok.end :]
        texts.append(text)
    joined = " | ".join(texts)
    if plan.union and len(texts) == 1:
        joined = f"({joined}) | {{}}"
    return joined


def _node_type(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    if path.startswith("System."):
        return _SYSTEM_TO_FHIR.get(path[7:])
    return path


def _without_primitive_extensions(value: Any) -> Any:
    """``value`` minus ``_element`` siblings, copying only what changes.

    fhirpathpy turns a primitive with such a sibling into two items (value and extension), so
    ``telecom.where(system = 'phone')`` misses ``{"system": "phone", "_system": {...}}`` and
    ``count()`` is off; search indexing ignores primitive extensions anyway.
    """
    if type(value) is dict:
        changed = False
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k[:1] == "_":
                changed = True
                continue
            nv = _without_primitive_extensions(v)
            changed = changed or nv is not v
            out[k] = nv
        return out if changed else value
    if type(value) is list:
        items = [_without_primitive_extensions(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, FP_Type):
        return str(value)
    return value


@functools.cache
def fallback_extractor(expression: str, resource_type: str) -> Extractor:
    """fhirpathpy evaluation of the parts of ``expression`` that apply to ``resource_type``.

    Never raises: a failing evaluation is logged (once per expression at warning level) and
    yields ``[]``. ``resource_type`` may also be a datatype or backbone path (see Typed.type).
    Evaluates a view of the resource without ``_element`` primitive extensions, so returned
    objects that contained some are copies without them.
    """
    plan = _plan(expression, resource_type)
    if not plan.parts:
        return _empty
    text = plan.parts[0].text if plan.whole else _fallback_text(plan, resource_type)
    try:
        model = _fhirpath_models["r4"]
        fn = fhirpathpy.compile(text, model=model, options=_FP_OPTIONS)
    except Exception as exc:
        log.warning("fhirpath %r on %s does not parse in fhirpathpy: %s", text, resource_type, exc)
        return _empty
    is_resource = resource_type in _model().resources
    warned = False

    def extract(resource: dict[str, Any]) -> list[Typed]:
        nonlocal warned
        token = _ROOT.set(resource)
        try:
            # fhirpathpy only sets this global inside is()/as(), so ofType() would ignore
            # subtypes (Age is a Quantity) until some is()/as() happened to run
            TypeInfo.model = model  # type: ignore[assignment]
            view = _without_primitive_extensions(resource)
            data: Any = view if is_resource else ResourceNode.create_node(view, resource_type)
            raw = fn(data, None)
        except Exception as exc:
            if not warned:
                warned = True
                log.warning("fhirpath %r on %s failed: %r", text, resource_type, exc)
            else:
                log.debug("fhirpath %r on %s failed: %r", text, resource_type, exc)
            return []
        finally:
            _ROOT.reset(token)
        out: list[Typed] = []
        for item in raw if isinstance(raw, list) else [raw]:
            if isinstance(item, ResourceNode):
                value, t = item.data, _node_type(item.path)
            else:
                value, t = item, ("boolean" if type(item) is bool else None)
            if value is None:
                continue
            out.append(Typed(_plain(value), t))
        return out

    return extract


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


@functools.cache
def _compiled(expression: str, resource_type: str) -> tuple[Extractor, bool]:
    native = _native(expression, resource_type)
    if native is not None:
        return native, True
    return fallback_extractor(expression, resource_type), False


def compile_expression(expression: str, resource_type: str) -> Extractor:
    """Extractor for the union parts of ``expression`` that apply to ``resource_type``.

    Parts rooted at another type are dropped; parts rooted at ``Resource``/``DomainResource`` or
    at no type (``name | alias``) apply. ``resource_type`` may also be a datatype
    (``UsageContext``) or backbone path (``Observation.component``) to evaluate composite
    components relative to an element. Cached per (expression, resource_type).
    """
    return _compiled(expression, resource_type)[0]


def is_fast(expression: str, resource_type: str) -> bool:
    """True when :func:`compile_expression` runs natively, without fhirpathpy."""
    return _compiled(expression, resource_type)[1]
