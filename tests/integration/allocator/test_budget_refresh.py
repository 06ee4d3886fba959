"""The add/edit budget is asked of the provider on a schedule (maintenance's idle-reclaim
round, every ``budget_refresh_s``), not only at reconciliation, and a reclaim never
spends the configured reserve."""

from __future__ import annotations

from allocator_svc.maintenance import Task
from voiceslot.providers.base import Capacity

from .conftest import at
from .fakes import FakeProvider


class BudgetedProvider(FakeProvider):
    """A provider whose monthly clone budget the test sets, counting who asks."""

    def __init__(self, budget: int) -> None:
        super().__init__(capacity=2)
        self.budget = budget
        self.asked = 0

    async def capacity(self) -> Capacity:
        self.asked += 1
        return Capacity(limit=2, used=len(self.live), add_edit_remaining=self.budget)


async def budget_of(served) -> int | None:  # noqa: ANN001 - the fixture's ServedAllocator
    (stats,) = await served.allocator.repo.provider_stats(at(0), name="fake")
    return stats.add_edit_remaining


async def test_the_idle_reclaim_round_refreshes_the_budget_at_most_once_per_period(
    serve_allocator,  # noqa: ANN001
):
    fake = BudgetedProvider(budget=40)
    served = await serve_allocator(fake=fake, budget_refresh_s=3600)
    asked = fake.asked  # start-up may ask for the capacity
    await served.allocator.run_maintenance([Task.RECONCILE], provider="")
    assert fake.asked == asked + 1
    assert await budget_of(served) == 40

    fake.budget = 39
    await served.allocator.run_maintenance([Task.RECLAIM_IDLE], provider="")
    assert fake.asked == asked + 1  # within the period: no second call
    assert await budget_of(served) == 40


async def test_a_short_period_picks_up_every_change(serve_allocator):  # noqa: ANN001
    fake = BudgetedProvider(budget=12)
    served = await serve_allocator(fake=fake, budget_refresh_s=1e-6)
    await served.allocator.run_maintenance([Task.RECLAIM_IDLE], provider="")
    assert await budget_of(served) == 12
    fake.budget = 3
    await served.allocator.run_maintenance([Task.RECLAIM_IDLE], provider="")
    assert await budget_of(served) == 3
