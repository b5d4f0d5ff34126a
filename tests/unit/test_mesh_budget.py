"""Retry budgets kept from the access log (mesh/budget.py)."""

from __future__ import annotations

from types import SimpleNamespace

from podnet.mesh.budget import MIN_RETRIES, RetryBudgets


def record(retries: int, backend: str = "be_a", direction: str = "outbound", pod: str = "shop/client"):
    return SimpleNamespace(direction=direction, backend=backend, retries=retries, pod=pod)


def test_over_when_retried_requests_pass_the_share() -> None:
    budgets = RetryBudgets()
    for i in range(100):
        budgets.observe(record(1 if i < 15 else 0), now=1000.0)
    assert budgets.counts("shop/client", "be_a", now=1000.0) == (100, 15)
    assert budgets.over("shop/client", "be_a", 10, now=1000.0)
    assert not budgets.over("shop/client", "be_a", 20, now=1000.0)
    assert not budgets.over("shop/client", "be_b", 1, now=1000.0)  # another backend: nothing seen


def test_a_quiet_backend_may_always_retry_a_little() -> None:
    budgets = RetryBudgets()
    for _ in range(MIN_RETRIES):
        budgets.observe(record(2), now=5.0)
    assert not budgets.over("shop/client", "be_a", 1, now=5.0)


def test_the_window_forgets_and_only_outbound_counts() -> None:
    budgets = RetryBudgets(window=10)
    for _ in range(20):
        budgets.observe(record(1), now=100.0)
        budgets.observe(record(1, direction="inbound"), now=100.0)
        budgets.observe(record(1, backend="passthrough"), now=100.0)
    assert budgets.counts("shop/client", "be_a", now=109.0) == (20, 20)
    assert budgets.counts("shop/client", "be_a", now=110.0) == (0, 0)
    assert not budgets.over("shop/client", "be_a", 50, now=111.0)
