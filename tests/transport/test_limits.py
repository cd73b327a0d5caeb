"""The sans-IO bounds of transport/limits.py: per-client slots, progress, the write budget."""

from __future__ import annotations

from ztdns.transport.limits import ClientSlots, Progress, WriteBudget


def test_client_slots_refuse_beyond_the_limit_and_free_on_give() -> None:
    slots = ClientSlots(2)
    assert slots.take("192.0.2.1") and slots.take("192.0.2.1")
    assert not slots.take("192.0.2.1") and slots.refused == 1
    assert slots.take("192.0.2.2")  # another client is not affected
    slots.give("192.0.2.1")
    assert slots.take("192.0.2.1")
    for _ in range(3):
        slots.give("192.0.2.1")
    assert "192.0.2.1" not in slots.counts  # no empty keys left behind


def test_progress_times_the_message_in_flight_not_the_bytes() -> None:
    progress = Progress()
    progress.fed(0.0, completed=0, buffered=1)  # first byte of a query
    progress.fed(4.0, completed=0, buffered=2)  # one more byte: not progress
    assert progress.overdue(5.5, timeout=5.0)
    progress.fed(5.6, completed=1, buffered=3)  # a whole query, and the next one begins
    assert progress.started == 5.6 and not progress.overdue(6.0, timeout=5.0)
    progress.fed(7.0, completed=1, buffered=0)
    assert progress.started is None and not progress.overdue(100.0, timeout=5.0)


class Holder:
    def __init__(self, size: int) -> None:
        self.size = size
        self.aborted = False

    def buffered(self) -> int:
        return self.size

    def abort(self) -> None:
        self.aborted = True


def test_write_budget_cuts_the_biggest_holders_first() -> None:
    budget = WriteBudget(100)
    small, big, middle = Holder(10), Holder(80), Holder(50)
    budget.block(small)
    budget.block(big)
    assert not big.aborted
    budget.block(middle)  # 140 > 100: the 80 goes, 60 stays
    assert big.aborted and not middle.aborted and not small.aborted
    assert budget.cut == 1 and budget.blocked == {small, middle}
    budget.unblock(small)
    assert budget.blocked == {middle}
