"""The public API: what ``sansio_signal`` exports is complete, documented and deliberate.

``__all__`` must name every public class and function of the modules listed in
:data:`PUBLIC_MODULES` (less the few kept in their module on purpose, each with its
reason), so that a new public name cannot be forgotten; every exported name must
resolve and carry a docstring; internals (``Timers``) stay out.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
from pathlib import Path
from types import ModuleType

import pytest

import sansio_signal

PUBLIC_MODULES = [
    "codes",
    "errors",
    "limits",
    "events",
    "actions",
    "wire",
    "relay",
    "directory",
    "room",
    "negotiation",
    "client",
]
"""The modules whose public classes and functions are the package's API."""

KEPT_IN_THEIR_MODULE = {
    # The codec's lower-level helpers: the relay's hot path and the trace writer use
    # them; an application uses parse_client_frame / parse_server_frame / encode.
    "wire": {
        "check_signal",
        "client_envelope",
        "decode_object",
        "dumps",
        "parse_chat",
        "parse_join_room",
        "parse_leave_room",
        "signal_stamp",
        "to_json",
        "wire_int",
    },
    # The transition table's vocabulary and its rendering (docs/update_diagram.py).
    "negotiation": {"Input", "RemoteOffer", "diagram"},
    "client": {"ClientInput", "ClientTimer", "Transition", "diagram"},
    "relay": {"diagram"},
    # SendFrame's positional constructor for the relay's hot path.
    "actions": {"send_frame"},
}
"""Public names that stay importable from their module only."""

INTERNAL = {"Timers"}
"""Names that must not be exported: the machines' own machinery."""

DOCSTRING_PENDING = {"RelayAction", "ClientAction", "PeerConnectionAction"}
"""Type aliases in actions.py still without an attribute docstring (that module is being
changed elsewhere at the moment); remove a name here once it has one."""

CORE = Path(sansio_signal.__file__).resolve().parent


def public_definitions(module: ModuleType) -> set[str]:
    """The public classes and functions ``module`` defines itself (not re-exports)."""
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


def exported_from() -> dict[str, str]:
    """``name → module`` for every name ``sansio_signal/__init__.py`` imports."""
    tree = ast.parse((CORE / "__init__.py").read_text())
    return {
        alias.asname or alias.name: node.module or ""
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }


def attribute_docstrings(path: Path) -> set[str]:
    """Module-level names of ``path`` followed by a string literal (their docstring)."""
    body = ast.parse(path.read_text()).body
    documented = set()
    for node, following in itertools.pairwise(body):
        targets = (
            [node.target]
            if isinstance(node, ast.AnnAssign)
            else node.targets
            if isinstance(node, ast.Assign)
            else []
        )
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            documented |= {t.id for t in targets if isinstance(t, ast.Name)}
    return documented


def test_every_exported_name_resolves() -> None:
    assert len(set(sansio_signal.__all__)) == len(sansio_signal.__all__)
    for name in sansio_signal.__all__:
        assert hasattr(sansio_signal, name), name
    namespace: dict[str, object] = {}
    exec("from sansio_signal import *", namespace)
    assert set(sansio_signal.__all__) <= set(namespace)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_names_every_public_class_and_function(module_name: str) -> None:
    module = importlib.import_module(f"sansio_signal.{module_name}")
    expected = public_definitions(module) - KEPT_IN_THEIR_MODULE.get(module_name, set())
    missing = expected - set(sansio_signal.__all__)
    assert not missing, f"export these from sansio_signal (or keep them, with a reason): {missing}"
    kept = KEPT_IN_THEIR_MODULE.get(module_name, set())
    assert kept <= public_definitions(module), "a name kept back no longer exists"
    assert not kept & set(sansio_signal.__all__)


def test_every_exported_name_has_a_docstring() -> None:
    sources = exported_from()
    undocumented = []
    for name in sansio_signal.__all__:
        obj = getattr(sansio_signal, name)
        if inspect.isclass(obj):  # its own, not one inherited
            documented = bool(vars(obj).get("__doc__"))
        elif inspect.isfunction(obj):
            documented = bool(obj.__doc__)
        else:  # a constant or a type alias: a string literal after its assignment
            module = sources.get(name)
            path = CORE / f"{module}.py" if module else CORE / "__init__.py"
            documented = name in attribute_docstrings(path)
        if not documented and name not in DOCSTRING_PENDING:
            undocumented.append(name)
    assert undocumented == []
    assert set(sansio_signal.__all__) >= DOCSTRING_PENDING


def test_internals_are_not_exported() -> None:
    for name in INTERNAL:
        assert name not in sansio_signal.__all__
        assert not hasattr(sansio_signal, name)
    assert all(not n.startswith("_") or n == "__version__" for n in sansio_signal.__all__)


def test_the_client_side_is_exported_with_the_relay_side() -> None:
    from sansio_signal import BROWSER, ClientMachine, JoinRequested, ServerConnected

    machine = ClientMachine("alice", capabilities=BROWSER, jitter=lambda: 0.5)
    machine.handle(ServerConnected(), 0.0)
    out = machine.handle(JoinRequested(room_id="demo"), 0.0)
    assert any(isinstance(action, sansio_signal.SendToServer) for action in out)
