"""Offence counting for dynamic promotion: threshold within a sliding hour, bounded memory."""

from netpolicy.kernel.promotion import OffenceTracker, PromotionDecision


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_promotes_at_threshold_within_the_hour() -> None:
    clock = Clock()
    t = OffenceTracker(clock=clock)
    assert t.record("L", "192.0.2.5", 3, 600) is None
    clock.now += 100
    assert t.record("L", "192.0.2.5", 3, 600) is None
    assert t.record("L", "192.0.2.5", 3, 600) == PromotionDecision("L", "192.0.2.5", 600, 3)
    assert t.record("L", "192.0.2.5", 3, 600) is None  # counting starts afresh


def test_old_offences_fall_out_of_the_window() -> None:
    clock = Clock()
    t = OffenceTracker(clock=clock)
    t.record("L", "192.0.2.5", 2, 60)
    clock.now += 3601
    assert t.record("L", "192.0.2.5", 2, 60) is None
    assert t.record("L", "192.0.2.5", 2, 60) is not None


def test_no_threshold_never_promotes_and_hosts_are_bounded() -> None:
    t = OffenceTracker(max_hosts=10)
    assert all(t.record("L", "192.0.2.5", None, 60) is None for _ in range(100))
    for i in range(50):
        t.record("L", f"10.0.0.{i}", 5, 60)
    assert len(t._hits) == 10
