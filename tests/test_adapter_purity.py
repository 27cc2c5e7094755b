"""The adapters hold no protocol decisions you can grep for.

The machines (``sansio_signal/`` and, for the browser, the pure JS modules machine.js,
wire.js, negotiation.js and client.js) decide everything: who offers, retries,
reconnects, what a frame means. An adapter (``adapters/*.py``, and the browser driver
and page scripts in ``adapters/static/``) feeds them events and runs their actions. This
lint looks for the traces a decision leaves in an adapter's source:

``machine-private``
    an attribute with a private name read off a machine object (``machine._x``,
    ``peer._x``, ``self.machine._x``, ``getattr(machine, "_x")``) or a module of the core;
``core-private-import``
    a private name imported from ``sansio_signal``;
``state-enum``
    a member of a machine's enums (``ClientState.JOINED``, ``NegState.STABLE``,
    ``Phase.JOINED``, ...);
``state-name``
    a comparison (``==``, ``is``, ``in``, ``===``, ``case``) with a state's name
    (``"joined"``, ``"stable"``, ``"have-local-offer"``, ...);
``message-type``
    a protocol message type or channel (``"join-room"``, ``"webrtc-offer"``, ...): as a
    string, or named in one;
``error-code``
    a protocol error code (``"user-id-taken"``, ...), likewise;
``initiator``
    ``initiator_of`` / ``initiatorOf`` (who offers is the machine's call);
``id-order``
    an ordering comparison of two ids (``user_id < peer_id``: who offers, again);
``retry-policy``
    a back-off computed by the adapter (``delay *= 2``, ``backoff(...)``, ``retry += 1``).

The names (message types, channels, error codes, enum members and state names) are
read from the core at test time, never copied. Python files are read as ASTs; the JS
files as text, with comments removed and string literals found by a small lexer.

Every finding names ``file:line`` and the rule. What the adapters do today is in
:data:`ALLOWED`, entry by entry with a reason: a new finding fails, and so does an entry
that matches nothing any more (remove it when its line is fixed) or more lines than it
says.
"""

from __future__ import annotations

import ast
import enum
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pytest

from sansio_signal import client as client_module
from sansio_signal import codes, negotiation, relay, wire

REPO = Path(__file__).resolve().parent.parent
ADAPTERS = REPO / "adapters"
STATIC = ADAPTERS / "static"
PURE_JS = frozenset({"machine.js", "wire.js", "negotiation.js", "client.js"})
"""The browser's machines: ports of the core, allowed every decision."""


# ------------------------------------------------------------------ names, from the core


def _message_types() -> frozenset[str]:
    types = {getattr(cls, "TYPE", None) for cls in vars(wire).values() if isinstance(cls, type)}
    return frozenset(t for t in types if isinstance(t, str) and t)


def _machine_enums() -> dict[str, type[enum.Enum]]:
    """Every enum the machine modules define, by name."""
    out: dict[str, type[enum.Enum]] = {}
    for module in (client_module, negotiation, relay):
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, enum.Enum)
                and value.__module__ == module.__name__
            ):
                out[name] = value
    return out


MESSAGE_TYPES = _message_types() | {c.value for c in codes.Channel}
ERROR_CODES = frozenset(c.value for c in codes.ErrorCode)
MACHINE_ENUMS = _machine_enums()
STATE_ENUMS = (
    client_module.ClientState,
    negotiation.NegState,
    negotiation.Link,
    negotiation.Role,
    relay.Phase,
)
STATE_NAMES = frozenset(str(member.value) for e in STATE_ENUMS for member in e)
PROTOCOL_STRINGS = {
    **dict.fromkeys(MESSAGE_TYPES, "message-type"),
    **dict.fromkeys(ERROR_CODES, "error-code"),
}
PLAIN_WORDS = frozenset(s for s in MESSAGE_TYPES if "-" not in s)
"""Message types and channels that are also plain words (``error``, ``system``): they
count only as a frame's ``type`` / ``channel`` (a value of that key, or compared with an
expression ending in ``type`` or ``channel``), not as a log level."""
TYPE_OR_CHANNEL = re.compile(r"(type|channel)_?\W*$")
INITIATOR_NAMES = frozenset({"initiator_of", "initiatorOf"})
MACHINE_WORDS = re.compile(r"\b(machine|machines|negotiation|neg|peer|peers|timers|room)\b")
"""An expression naming one of these is (or holds) a machine object."""
RETRY_WORDS = re.compile(r"(delay|backoff|retry|retries|attempt)", re.IGNORECASE)
ID_WORDS = re.compile(r"(_id|Id|^id)\b|\bid$")


def _mentions(text: str) -> Iterator[str]:
    """The hyphenated protocol strings named inside ``text`` (whole words; a plain word
    like ``error`` or ``unauthorized`` in prose is no reference)."""
    for name in PROTOCOL_STRINGS:
        if "-" in name and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
            yield name


# ------------------------------------------------------------------ findings


@attrs.frozen(order=True)
class Finding:
    path: str
    """Relative to the repository."""
    line: int
    rule: str
    text: str
    """The source line, stripped."""
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.why}: {self.text}"


@attrs.frozen
class Allowed:
    """Findings that exist today: ``rule`` in ``path`` on lines containing ``contains``,
    exactly ``count`` of them."""

    path: str
    rule: str
    contains: str
    reason: str
    count: int = 1

    def matches(self, finding: Finding) -> bool:
        return (finding.path, finding.rule) == (self.path, self.rule) and (
            self.contains in finding.text
        )


# ------------------------------------------------------------------ Python, by AST


class _PyLint(ast.NodeVisitor):
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.findings: list[Finding] = []
        self.machine_aliases: set[str] = set()
        self.core_modules: set[str] = set()
        self.docstrings: set[int] = set()
        self.as_type: set[int] = set()
        """ids of string constants used as a frame's type or channel."""

    def add(self, node: ast.AST, rule: str, why: str) -> None:
        line = getattr(node, "lineno", 0)
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        self.findings.append(Finding(self.path, line, rule, text, why))

    def run(self, tree: ast.Module) -> list[Finding]:
        for node in ast.walk(tree):  # first pass: docstrings, aliases, comparison operands
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                self.docstrings.add(id(node.value))
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if self._is_machine(node.value):
                    self.machine_aliases |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "sansio_signal":
                        self.core_modules.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                if (node.module or "").split(".")[0] == "sansio_signal":
                    for alias in node.names:
                        if alias.name[:1].islower() and not alias.name.startswith("_"):
                            self.core_modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(TYPE_OR_CHANNEL.search(ast.unparse(o)) for o in operands):
                    for operand in operands:
                        self.as_type |= {id(s) for s in _strings_of(operand)}
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in ("type", "channel"):
                        self.as_type |= {id(s) for s in _strings_of(value)}
            elif isinstance(node, ast.keyword) and node.arg in ("type", "channel"):
                self.as_type |= {id(s) for s in _strings_of(node.value)}
        self.visit(tree)
        return self.findings

    def _is_machine(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.machine_aliases or bool(MACHINE_WORDS.search(node.id))
        return bool(MACHINE_WORDS.search(ast.unparse(node)))

    # -- rules

    def visit_Attribute(self, node: ast.Attribute) -> None:
        base = node.value
        if _private(node.attr) and not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
            if isinstance(base, ast.Name) and base.id in self.core_modules:
                self.add(node, "machine-private", f"{base.id}.{node.attr} of the core")
            elif self._is_machine(base):
                self.add(node, "machine-private", f"{ast.unparse(base)}.{node.attr}")
        if isinstance(base, ast.Name) and base.id in MACHINE_ENUMS:
            self.add(node, "state-enum", f"{base.id}.{node.attr}")
        if node.attr in INITIATOR_NAMES:
            self.add(node, "initiator", node.attr)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in INITIATOR_NAMES:
            self.add(node, "initiator", node.id)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        core = node.level == 0 and (node.module or "").split(".")[0] == "sansio_signal"
        for alias in node.names:
            if core and _private(alias.name):
                self.add(node, "core-private-import", f"{alias.name} from {node.module}")
            if alias.name in INITIATOR_NAMES:
                self.add(node, "initiator", f"imports {alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            target, attr = node.args[0], node.args[1]
            if (
                isinstance(attr, ast.Constant)
                and isinstance(attr.value, str)
                and _private(attr.value)
                and (self._is_machine(target) or ast.unparse(target) in self.core_modules)
            ):
                self.add(node, "machine-private", f"{name}({ast.unparse(target)}, {attr.value!r})")
        if name == "backoff":
            self.add(node, "retry-policy", "computes a back-off")
        if name in ("min", "max") and len(node.args) >= 2 and all(_id_like(a) for a in node.args):
            self.add(node, "id-order", f"{name}() of ids")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for op, (left, right) in zip(node.ops, itertools.pairwise(operands), strict=True):
            if (
                isinstance(op, ast.Lt | ast.Gt | ast.LtE | ast.GtE)
                and _id_like(left)
                and _id_like(right)
            ):
                self.add(node, "id-order", f"{ast.unparse(left)} vs {ast.unparse(right)}")
        for operand in operands:
            for s in _strings_of(operand):
                if s.value in STATE_NAMES:
                    self.add(node, "state-name", f"compares with {s.value!r}")
        self.generic_visit(node)

    def visit_MatchValue(self, node: ast.MatchValue) -> None:
        for s in _strings_of(node.value):
            if s.value in STATE_NAMES:
                self.add(node, "state-name", f"case {s.value!r}")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.Mult | ast.Pow | ast.LShift) and RETRY_WORDS.search(
            ast.unparse(node.target)
        ):
            self.add(node, "retry-policy", f"grows {ast.unparse(node.target)}")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            name = ast.unparse(target)
            if RETRY_WORDS.search(name) and any(
                isinstance(n, ast.BinOp)
                and isinstance(n.op, ast.Mult | ast.Pow | ast.LShift)
                and name in {ast.unparse(n.left), ast.unparse(n.right)}
                for n in ast.walk(node.value)
            ):
                self.add(node, "retry-policy", f"grows {name}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str) or id(node) in self.docstrings:
            return
        rule = PROTOCOL_STRINGS.get(node.value)
        if rule is not None and (node.value not in PLAIN_WORDS or id(node) in self.as_type):
            self.add(node, rule, repr(node.value))
        elif rule is None:
            for name in _mentions(node.value):
                self.add(node, PROTOCOL_STRINGS[name], f"names {name!r}")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _strings_of(node: ast.AST) -> list[ast.Constant]:
    """The string constants ``node`` is or lists (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [e for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _id_like(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    return isinstance(name, str) and bool(ID_WORDS.search(name))


def lint_python(path: str, source: str) -> list[Finding]:
    return sorted(set(_PyLint(path, source).run(ast.parse(source, path))))


# ------------------------------------------------------------------ JS, by text


@attrs.frozen
class JsString:
    start: int
    end: int
    """Offsets of the literal in the source, quotes included (a template literal's
    segment between ``${...}`` counts as one string)."""
    value: str


def lex_js(source: str) -> tuple[str, list[JsString]]:
    """``source`` with comments and string contents blanked (newlines kept, offsets
    unchanged), and its string literals. Regex literals are not understood: a file with
    one holding a quote or ``//`` would need more than this."""
    out = list(source)
    strings: list[JsString] = []
    stack: list[str] = []  # "`" inside a template literal, "{" inside its ${...}
    i, n = 0, len(source)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    def read_string(start: int, quote: str) -> int:
        """Offset after the literal (or template segment) starting at ``start``."""
        k = start + 1
        while k < n:
            ch = source[k]
            if ch == "\\":
                k += 2
                continue
            if ch == quote:
                strings.append(JsString(start, k + 1, source[start + 1 : k]))
                blank(start + 1, k)
                return k + 1
            if quote == "`" and source.startswith("${", k):
                strings.append(JsString(start, k, source[start + 1 : k]))
                blank(start + 1, k)
                stack.append("`")
                return k + 2
            if quote != "`" and ch == "\n":
                raise ValueError(f"unterminated string at offset {start}")
            k += 1
        raise ValueError(f"unterminated string at offset {start}")

    while i < n:
        ch = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif source.startswith("/*", i):
            end = source.index("*/", i + 2) + 2
            blank(i, end)
            i = end
        elif ch in "\"'`":
            i = read_string(i, ch)
        elif ch == "{" and stack:
            stack.append("{")
            i += 1
        elif ch == "}" and stack:
            if stack.pop() == "`":  # the end of a ${...}: the template goes on
                i = read_string(i, "`")
            else:
                i += 1
        else:
            i += 1
    if stack:
        raise ValueError("unbalanced template literal")
    return "".join(out), strings


_COMPARE_BEFORE = re.compile(r"(===|!==|==|!=|\bcase)\s*$")
_COMPARE_AFTER = re.compile(r"^\s*(===|!==|==|!=)")
_KEY_BEFORE = re.compile(r"\b(type|channel)\s*:\s*$")
_TYPE_COMPARED_BEFORE = re.compile(r"(type|channel)\W*\s*(===|!==|==|!=)\s*$")
_TYPE_COMPARED_AFTER = re.compile(r"^\s*(===|!==|==|!=)\s*[\w$.?\[\]\"']*(type|channel)\b")
_PRIVATE = re.compile(r"\??\.\s*(_[A-Za-z$][\w$]*)")
_CHAIN_END = re.compile(r"([\w$]+(?:\s*\??\.\s*[\w$]+|\([^()]*\)|\[[^\[\]]*\])*)\s*$")
_ALIAS = re.compile(r"\b(?:const|let|var)\s+([\w$]+)\s*=\s*([^;\n]*)")


def lint_js(path: str, source: str) -> list[Finding]:
    code, strings = lex_js(source)
    lines = source.splitlines()
    findings: list[Finding] = []

    def add(offset: int, rule: str, why: str) -> None:
        line = source.count("\n", 0, offset) + 1
        findings.append(Finding(path, line, rule, lines[line - 1].strip(), why))

    for s in strings:
        before, after = code[max(0, s.start - 60) : s.start], code[s.end : s.end + 60]
        compared = bool(_COMPARE_BEFORE.search(before) or _COMPARE_AFTER.search(after))
        as_type = bool(
            _KEY_BEFORE.search(before)
            or _TYPE_COMPARED_BEFORE.search(before)
            or _TYPE_COMPARED_AFTER.search(after)
        )
        rule = PROTOCOL_STRINGS.get(s.value)
        if rule is not None:
            if s.value not in PLAIN_WORDS or as_type:
                add(s.start, rule, repr(s.value))
        else:
            for name in _mentions(s.value):
                add(s.start, PROTOCOL_STRINGS[name], f"names {name!r}")
        if s.value in STATE_NAMES and compared:
            add(s.start, "state-name", f"compares with {s.value!r}")
    aliases = {m[1] for m in _ALIAS.finditer(code) if MACHINE_WORDS.search(m[2])}
    for m in _PRIVATE.finditer(code):
        chain = _CHAIN_END.search(code[: m.start()].rsplit("\n", 1)[-1])
        base = "" if chain is None else re.sub(r"\s+", "", chain[1])
        if base == "this":
            continue
        if MACHINE_WORDS.search(base) or base.split(".")[0] in aliases:
            add(m.start(), "machine-private", f"{base}.{m[1]}")
    enum_names = "|".join(sorted({*MACHINE_ENUMS, "ClientState", "NegState"}))
    for m in re.finditer(rf"\b({enum_names})\s*\.\s*([A-Z][A-Z0-9_]*)\b", code):
        add(m.start(), "state-enum", f"{m[1]}.{m[2]}")
    for m in re.finditer(r"\b(initiatorOf|initiator_of)\b", code):
        add(m.start(), "initiator", m[1])
    for m in re.finditer(r"([\w$.]*[iI]d)\s*(<=?|>=?)\s*([\w$.]*[iI]d)\b", code):
        add(m.start(), "id-order", f"{m[1]} {m[2]} {m[3]}")
    for m in re.finditer(r"\bbackoff\s*\(", code):
        add(m.start(), "retry-policy", "computes a back-off")
    for m in re.finditer(r"([\w$.]+)\s*(\*=|\+\+|\+=)", code):
        if RETRY_WORDS.search(m[1]):
            add(m.start(), "retry-policy", f"counts or grows {m[1]}")
    return sorted(set(findings))


# ------------------------------------------------------------------ the adapters


def adapter_files() -> list[Path]:
    py = sorted(ADAPTERS.glob("*.py"))
    js = sorted(p for p in STATIC.glob("*.js") if p.name not in PURE_JS)
    return py + js


def lint_file(path: Path) -> list[Finding]:
    rel = path.relative_to(REPO).as_posix()
    source = path.read_text(encoding="utf-8")
    return lint_python(rel, source) if path.suffix == ".py" else lint_js(rel, source)


ALLOWED: list[Allowed] = [
    # ---- adapters/cli.py
    Allowed(
        "adapters/cli.py",
        "error-code",
        "a join that would open one more gets room-full",
        "--max-rooms help text names the error a client gets (documentation only)",
    ),
    # ---- adapters/server.py: Prometheus refusal labels that are also error codes
    Allowed(
        "adapters/server.py",
        "error-code",
        '"rate-limited",',
        "REFUSAL_REASONS: a metrics label (the error it counts)",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        '"frame-too-large",',
        "REFUSAL_REASONS: a metrics label (the error it counts)",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        '"room-full",',
        "REFUSAL_REASONS: a metrics label (the error it counts)",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        '"unauthorized",',
        "REFUSAL_REASONS: a metrics label (the error it counts)",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        'counts["rate-limited"] = stats.errors["rate-limited"]',
        "count_refusals(): the machine's error counter under its metrics label",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        'counts["unauthorized"] = stats.errors["unauthorized"]',
        "count_refusals(): the machine's error counter under its metrics label",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        'counts["room-full"] = stats.errors["room-full"] - rooms_limit',
        "count_refusals(): the machine's error counter under its metrics label",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        'counts["frame-too-large"] += stats.errors["frame-too-large"]',
        "count_refusals(): the machine's error counter under its metrics label",
    ),
    Allowed(
        "adapters/server.py",
        "error-code",
        'self.refusals["frame-too-large"] += 1',
        "_count_too_big(): a 1009 sent by picows (one frame) or by the adapter (a "
        "fragmented message), counted under that label",
    ),
    # ---- adapters/static/sansio-signal.js (the browser driver)
    Allowed(
        "adapters/static/sansio-signal.js",
        "state-name",
        'if (pc.signalingState === "have-local-offer") await pc.setLocalDescription(',
        "RollbackLocalDescription is defined as 'if pc has a local offer' (actions.py): "
        "the machine may ask while its CreateOffer runs, which can fail",
    ),
    # ---- adapters/static/demo.js (the demo page's UI)
    Allowed(
        "adapters/static/demo.js",
        "state-name",
        'peer.link === "failed" || peer.state === "failed"',
        "the participant list labels a peer 'failed' from the machine's states (display)",
    ),
    Allowed(
        "adapters/static/demo.js",
        "state-name",
        'const inRoom = client !== null && client.state === "joined";',
        "the page enables its room controls from the client's state (display)",
    ),
    Allowed(
        "adapters/static/demo.js",
        "state-name",
        '$("status").textContent = client === null ? "offline" : client.state === "joined"',
        "the status line shows the client's state (display)",
    ),
]


def check(findings: Iterable[Finding], allowed: Iterable[Allowed]) -> list[str]:
    """Every problem: findings no entry allows, and entries that match a number of
    findings other than their ``count`` (0: stale, remove it)."""
    findings, allowed = list(findings), list(allowed)
    problems = [f"not allowed: {f}" for f in findings if not any(a.matches(f) for a in allowed)]
    for a in allowed:
        hits = [f for f in findings if a.matches(f)]
        if len(hits) != a.count:
            where = "".join(f"\n    {f}" for f in hits) or " (stale: remove the entry)"
            problems.append(
                f"allowed {a.path} [{a.rule}] {a.contains!r} expects {a.count}, "
                f"found {len(hits)}{where}"
            )
    return problems


def test_the_adapters_hold_no_protocol_decisions() -> None:
    files = adapter_files()
    names = {p.name for p in files}
    assert {"client.py", "server.py", "aiortc_peer.py", "sansio-signal.js"} <= names, names
    findings = [f for path in files for f in lint_file(path)]
    problems = check(findings, ALLOWED)
    assert not problems, "\n".join(problems)


def test_the_names_come_from_the_core() -> None:
    assert {"join-room", "user-joined-room", "webrtc-offer", "webrtc-ice", "error"} <= MESSAGE_TYPES
    assert {"webrtc-signaling", "system"} <= MESSAGE_TYPES
    assert {"user-id-taken", "bad-json"} <= ERROR_CODES
    assert {"joined", "offline", "stable", "have-local-offer", "initiator"} <= STATE_NAMES
    assert {"ClientState", "NegState", "Phase", "Link", "Role"} <= set(MACHINE_ENUMS)


# ------------------------------------------------------------------ the lint lints


BAD_PY = '''\
"""A docstring may say join-room and joined."""
import sansio_signal.client as core
from sansio_signal.client import ClientState, _RESUME_KEY
from sansio_signal.negotiation import initiator_of

def f(self, machine, peer_id, frame):
    m = self.machine
    a = machine._peers
    b = m._timers
    c = self.machine.peers[peer_id]._pending
    d = getattr(self.machine, "_room")
    e = core._ABSENT_KEY
    if self.machine.state is ClientState.JOINED:
        pass
    if peer.state == "stable" or x in ("joined", "lobby"):
        pass
    frame = {"type": "webrtc-offer", "channel": "system"}
    if frame["type"] == "error":
        pass
    log("error", "not a type")
    help = "sends a user-joined-room; see user-id-taken"
    if initiator_of(self.user_id, peer_id) == self.user_id or self.user_id < peer_id:
        pass
    delay *= 2
    self.delay = min(5.0, self.delay * 2)
    self._private = 1
    self._rtc._pcs = {}
'''
BAD_PY_EXPECTED = {
    (3, "core-private-import"),
    (4, "initiator"),
    (8, "machine-private"),
    (9, "machine-private"),
    (10, "machine-private"),
    (11, "machine-private"),
    (12, "machine-private"),
    (13, "state-enum"),
    (15, "state-name"),
    (17, "message-type"),
    (18, "message-type"),
    (21, "message-type"),
    (21, "error-code"),
    (22, "initiator"),
    (22, "id-order"),
    (24, "retry-policy"),
    (25, "retry-policy"),
}

BAD_JS = """\
// a comment about "join-room" and this.machine._x === "joined"
/* and "webrtc-offer" */
import { initiatorOf, backoff } from "./machine.js";
class X {
  f(frame, peer) {
    if (this.machine.state !== "offline") this._log("error", `hi ${peer.id} "join-room"`);
    const m = this.machine;
    const a = m._rooms + this.machine._timers + this.peers.get(id)._pending;
    if (frame.type === "join-room") return `joining ${frame.roomId} via user-joined-room`;
    switch (state) { case "stable": break; }
    if (NegState.STABLE === peer.state || ClientState.JOINED) this._retry += 1;
    const d = backoff(c, 1, 0.5); if (msg.type === "error" || level === "error") return d;
    if (this.userId < peerId) return { type: "error", channel: "system" };
    this._ws.send("x"); conn.pc.close();
  }
}
"""
BAD_JS_EXPECTED = {
    (3, "initiator"),
    (6, "state-name"),
    (6, "message-type"),
    (8, "machine-private"),
    (9, "message-type"),
    (10, "state-name"),
    (11, "state-enum"),
    (11, "retry-policy"),
    (12, "retry-policy"),
    (12, "message-type"),
    (13, "id-order"),
    (13, "message-type"),
}


def test_the_python_lint_finds_each_rule() -> None:
    found = lint_python("bad.py", BAD_PY)
    assert {(f.line, f.rule) for f in found} == BAD_PY_EXPECTED, "\n".join(map(str, found))
    assert str(found[0]).startswith("bad.py:3: [core-private-import]")


def test_the_js_lint_finds_each_rule() -> None:
    found = lint_js("bad.js", BAD_JS)
    assert {(f.line, f.rule) for f in found} == BAD_JS_EXPECTED, "\n".join(map(str, found))
    privates = [f.why for f in found if f.line == 8]
    assert privates == ["m._rooms", "this.machine._timers", "this.peers.get(id)._pending"]
    # the ${...} of a template literal is code again; the segments around it are strings
    assert [f.why for f in found if f.line == 9] == ["'join-room'", "names 'user-joined-room'"]


def test_the_lexer_keeps_strings_and_blanks_comments() -> None:
    source = 'a = "x//y"; // "c"\nb = `t${ {k: "v"}.k }u`; /* "d" */ c = \'q\\\'\';'
    code, strings = lex_js(source)
    assert [s.value for s in strings] == ["x//y", "t", "v", "u", "q\\'"]
    assert len(code) == len(source) and code.count("\n") == 1
    assert '"c"' not in code and '"d"' not in code and "{k:" in code


def test_an_allowlist_entry_is_stale_when_it_matches_nothing() -> None:
    finding = Finding("adapters/x.py", 3, "state-enum", "if s is ClientState.JOINED:", "why")
    ok = Allowed("adapters/x.py", "state-enum", "ClientState.JOINED", "because")
    assert check([finding], [ok]) == []
    stale = Allowed("adapters/x.py", "state-enum", "ClientState.LOBBY", "fixed since")
    assert len(problems := check([finding], [ok, stale])) == 1 and "stale" in problems[0]
    assert check([finding], [stale])[0].startswith("not allowed: adapters/x.py:3: [state-enum]")
    twice = attrs.evolve(finding, line=9)
    assert "expects 1, found 2" in check([finding, twice], [ok])[0]


@pytest.mark.parametrize("path", adapter_files(), ids=lambda p: p.name)
def test_every_adapter_file_can_be_read(path: Path) -> None:
    lint_file(path)  # a JS file the lexer cannot follow fails here, by name
