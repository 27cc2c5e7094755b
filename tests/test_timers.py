"""Timers: a deadline queue keyed by hashables, checked by hand and against a model."""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal.timers import Timers


def test_empty() -> None:
    timers = Timers()
    assert timers.next_deadline() is None
    assert timers.pop_due(1e18) == []
    assert len(timers) == 0
    assert timers.deadline_of("x") is None


def test_schedule_and_pop_due_in_deadline_order() -> None:
    timers = Timers()
    timers.schedule("c", 30.0)
    timers.schedule("a", 10.0)
    timers.schedule("b", 20.0)
    assert len(timers) == 3
    assert timers.next_deadline() == 10.0
    assert timers.pop_due(9.999) == []
    assert timers.pop_due(20.0) == ["a", "b"]  # a deadline equal to now is due
    assert timers.next_deadline() == 30.0
    assert len(timers) == 1
    assert timers.pop_due(100.0) == ["c"]
    assert timers.next_deadline() is None
    assert len(timers) == 0


def test_equal_deadlines_pop_in_scheduling_order() -> None:
    timers = Timers()
    for key in ["z", "y", "x", 3, ("t", 1)]:
        timers.schedule(key, 5.0)
    assert timers.pop_due(5.0) == ["z", "y", "x", 3, ("t", 1)]


def test_move_a_deadline_later_and_earlier() -> None:
    timers = Timers()
    timers.schedule("a", 10.0)
    timers.schedule("b", 15.0)
    timers.schedule("a", 20.0)  # later: the old entry is stale
    assert timers.deadline_of("a") == 20.0
    assert len(timers) == 2
    assert timers.next_deadline() == 15.0
    assert timers.pop_due(12.0) == []
    timers.schedule("a", 1.0)  # earlier
    assert timers.next_deadline() == 1.0
    assert timers.pop_due(16.0) == ["a", "b"]
    assert timers.pop_due(100.0) == []  # the stale entries of "a" never surface


def test_cancel() -> None:
    timers = Timers()
    timers.schedule("a", 1.0)
    timers.schedule("b", 2.0)
    timers.cancel("a")
    timers.cancel("never-scheduled")  # no error
    assert timers.deadline_of("a") is None
    assert len(timers) == 1
    assert timers.next_deadline() == 2.0
    assert timers.pop_due(10.0) == ["b"]
    assert timers.next_deadline() is None


def test_cancel_then_reschedule() -> None:
    timers = Timers()
    timers.schedule("a", 5.0)
    timers.cancel("a")
    timers.schedule("a", 5.0)  # same deadline as the cancelled entry
    assert timers.pop_due(5.0) == ["a"]  # exactly once
    assert timers.pop_due(5.0) == []


def test_popped_keys_are_forgotten() -> None:
    timers = Timers()
    timers.schedule("a", 1.0)
    assert timers.pop_due(1.0) == ["a"]
    assert timers.deadline_of("a") is None
    timers.cancel("a")  # cancelling a fired key is harmless
    assert len(timers) == 0


# --------------------------------------------------------------------------- model test

_KEYS = st.sampled_from(["a", "b", "c", "d", 1, 2, ("k", 1)])
_TIMES = st.integers(0, 40).map(lambda n: n / 4)

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), _KEYS, _TIMES),
        st.tuples(st.just("cancel"), _KEYS, st.just(0.0)),
        st.tuples(st.just("pop_due"), st.just(""), _TIMES),
        st.tuples(st.just("next"), st.just(""), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_timers_against_a_dict_model(ops: list[tuple[str, Hashable, float]]) -> None:
    timers = Timers()
    model: dict[Hashable, tuple[float, int]] = {}  # key -> (deadline, when it was scheduled)
    clock = 0
    for op, key, t in ops:
        if op == "schedule":
            clock += 1
            timers.schedule(key, t)
            model[key] = (t, clock)
        elif op == "cancel":
            timers.cancel(key)
            model.pop(key, None)
        elif op == "pop_due":
            due = sorted((v, k) for k, v in model.items() if v[0] <= t)
            expected = [k for _, k in due]
            for k in expected:
                del model[k]
            assert timers.pop_due(t) == expected
        else:
            expected_next = min((v[0] for v in model.values()), default=None)
            assert timers.next_deadline() == expected_next
        assert len(timers) == len(model)
        for k, (deadline, _) in model.items():
            assert timers.deadline_of(k) == deadline
    assert timers.next_deadline() == min((v[0] for v in model.values()), default=None)
