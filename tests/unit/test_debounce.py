"""The debouncer: bursts become one entry; quiet period and max wait both release."""

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from runner.core.debounce import Debouncer

A, B = Path("a.yaml"), Path("b.yaml")


def test_a_burst_is_released_once_after_the_quiet_period() -> None:
    d = Debouncer(quiet=1.0, max_wait=10.0)
    for t in (0.0, 0.25, 0.5):
        d.add(A, t)
    assert d.ready(1.25) == set()
    assert d.next_deadline() == 1.5
    assert d.ready(1.5) == {A}
    assert d.ready(5.0) == set() and len(d) == 0


def test_a_path_written_forever_is_released_at_max_wait() -> None:
    d = Debouncer(quiet=1.0, max_wait=3.0)
    t = 0.0
    released = []
    while t < 7.0:
        d.add(A, t)
        if d.ready(t):
            released.append(t)
        t += 0.5
    assert released == [3.0, 6.5]


def test_paths_settle_independently() -> None:
    d = Debouncer(quiet=1.0, max_wait=10.0)
    d.add(A, 0.0)
    d.add(B, 0.8)
    assert d.ready(1.0) == {A}
    assert d.ready(1.8) == {B}


@given(st.lists(st.tuples(st.sampled_from([A, B]), st.floats(0, 100)), max_size=50))
def test_every_path_with_events_is_released_exactly_once_after_events_stop(
    events: list[tuple[Path, float]],
) -> None:
    d = Debouncer(quiet=0.5, max_wait=2.0)
    released: list[Path] = []
    for path, t in sorted(events, key=lambda e: e[1]):
        released.extend(d.ready(t))
        d.add(path, t)
    released.extend(d.ready(1_000.0))
    assert set(released) == {p for p, _ in events}
    assert len(d) == 0
