"""The per-app bulkhead: a bounded count per app, independent between apps, and bounded memory."""

from __future__ import annotations

from paastis.bulkhead import Bulkhead


def test_each_app_gets_at_most_its_limit_and_others_are_not_affected():
    bulkhead = Bulkhead(2)
    assert bulkhead.enter("shop") and bulkhead.enter("shop")
    assert not bulkhead.enter("shop")
    assert bulkhead.enter("blog")
    bulkhead.leave("shop")
    assert bulkhead.enter("shop")
    assert bulkhead.in_flight("shop") == 2 and bulkhead.in_flight("blog") == 1


def test_apps_with_nothing_in_flight_are_forgotten():
    bulkhead = Bulkhead(1)
    for index in range(1000):
        assert bulkhead.enter(f"review-{index}")
        bulkhead.leave(f"review-{index}")
    assert bulkhead._counts == {}


def test_a_flood_of_refusals_warns_once_per_app():
    bulkhead = Bulkhead(1)
    assert bulkhead.should_warn("shop")
    assert not bulkhead.should_warn("shop")
    assert bulkhead.should_warn("blog")
