"""Shared fixtures: real gunicorn instances with the local provider, cleaned up after each test.

Marked ``e2e``: every test in a ``test_e2e_*`` file, every other test that starts gunicorn
(through ``gunicorn_factory`` or a fixture built on it), and the tests listed below, which start
other processes (local apps, a private Redis or PostgreSQL, a browser) or wait on real clocks
(the fake PaaS APIs' rate limits and operations). ``pytest -m "not e2e"`` then runs the
in-process tests alone, in well under 30 s in one process. A new slow test belongs in a
``test_e2e_*`` file, or in the lists below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_support import database_url, pg_database  # noqa: F401 - fixtures
from tests.redis_support import SHARED_URL, delete_prefix, unique_prefix
from tests.support import Gunicorn, kill_local_apps, write_config

# Start processes (local apps, a private Redis or PostgreSQL) or wait on real clocks: the whole module.
E2E_MODULES = {
    "test_api_budget.py",
    "test_bounded_state.py",
    "test_cluster_locks.py",
    "test_local_truth.py",
    "test_redis_link.py",
    "test_schedule_runner.py",
    "test_waiting.py",
}
# Tests that wake local apps (subprocesses), stop a private Redis or PostgreSQL, or wait out the real
# clocks of the fake PaaS APIs (rate limits, 429 storms, operation polling, token expiry).
E2E_TESTS = {
    "test_places.py": {
        "test_released_entries_leave_the_table_clean",
    },
    "test_api_budget.py": {
        "test_listings_yield_while_stops_are_queued_and_return_when_the_budget_is_idle",
        "test_formations_are_read_ahead_so_that_a_found_running_app_stops_in_one_call",
    },
    "test_bookkeeping.py": {
        "test_traffic_flows_while_the_registry_waits_on_a_hung_redis",
    },
    "test_orderly_ending.py": {
        "test_shutdown_waits_for_a_stop_under_way_before_closing_provider_and_registry",
    },
    "test_dashboard.py": {
        "test_a_running_app_counts_down_from_its_last_request",
        "test_an_app_s_schedule_and_next_change_are_shown",
        "test_apps_still_get_their_requests_and_their_own_cookies",
        "test_posts_without_the_csrf_token_are_forbidden",
        "test_the_script_gets_the_fresh_row",
        "test_wake_and_stop_work_as_plain_forms",
    },
    "test_deadlines.py": {
        "test_a_read_cut_by_the_deadline_is_a_provider_timeout_and_is_not_retried",
    },
    "test_directory.py": {
        "test_readers_never_wait_on_someone_elses_listing_nor_see_half_a_list",
    },
    "test_events.py": {
        "test_a_redis_outage_fails_fast_and_the_store_recovers",
        "test_requests_are_served_while_the_event_store_is_down",
        "test_the_lifecycle_records_each_kind_of_event",
    },
    "test_hooks.py": {
        "test_a_timeout_kills_the_whole_process_group",
    },
    "test_pg_events.py": {
        "test_apps_are_woken_and_served_while_postgresql_is_unreachable",
    },
    "test_provider_clever.py": {
        "test_a_429_is_waited_out",
        "test_a_crash_at_boot_is_failed",
        "test_an_app_meant_to_be_up_without_instances_is_redeployed",
        "test_start_stop_and_status",
    },
    "test_provider_heroku.py": {
        "test_a_429_storm_is_waited_out",
        "test_a_formation_read_ahead_makes_the_stop_one_call",
        "test_apps_seen_scaled_up_are_checked_at_every_listing",
        "test_calls_slow_down_before_the_bucket_is_empty",
        "test_listing_checks_a_bounded_rotating_share_of_statuses",
        "test_listing_follows_next_range_and_uses_web_url",
        "test_status_follows_formation_then_dynos",
        "test_stop_remembers_the_formation_and_start_restores_it_exactly",
    },
    "test_provider_http.py": {
        "test_a_read_is_retried_on_5xx_until_it_succeeds",
        "test_a_read_is_retried_on_network_errors_then_fails_clearly",
    },
    "test_provider_scalingo.py": {
        "test_a_429_storm_is_waited_out",
        "test_a_formation_changed_behind_our_back_is_read_again_or_remembered",
        "test_a_start_right_after_a_stop_waits_for_the_scale_down_to_finish",
        "test_a_stop_an_operator_waits_for_is_followed_to_its_end",
        "test_a_stop_costs_one_call_with_the_formation_known_and_two_without",
        "test_apps_of_every_region_are_listed_and_managed_in_their_region",
        "test_bearer_is_renewed_before_it_expires",
        "test_calls_never_exceed_the_budget",
        "test_crashed_app_fails_fast_with_the_operation_error",
        "test_formation_is_remembered_on_stop_and_restored_exactly",
        "test_one_region_failing_fails_the_listing",
        "test_refused_bearer_is_renewed_once_and_the_call_retried",
        "test_start_without_memo_scales_web_to_one",
        "test_statuses_are_mapped",
        "test_unusable_memo_falls_back_to_web_one",
        "test_workers_share_one_budget_in_redis",
    },
    "test_redis_registry.py": {
        "test_a_host_clock_60s_off_hides_no_request_in_flight",
        "test_a_request_end_records_its_access_and_leaves_in_flight_in_one_step",
        "test_a_crashed_instance_does_not_pin_an_app_awake",
        "test_a_hung_redis_costs_one_socket_timeout_not_one_per_request",
        "test_a_killed_leader_is_replaced_within_the_ttl",
        "test_a_long_request_keeps_its_entry_alive_past_the_ttl",
        "test_leadership_is_exclusive_renewed_and_released",
        "test_touches_are_written_at_most_once_a_second_yet_recorded",
    },
    "test_relay.py": {
        "test_a_quiet_connection_stops_counting_without_touching_the_app",
        "test_going_away_waits_for_the_end_of_the_frame_under_way",
    },
    "test_system_api.py": {
        "test_delete_apps_forgets_the_registry_and_touches_no_app",
        "test_delete_apps_with_redis_forgets_only_the_registry",
        "test_each_idle_check_is_timed_and_counts_the_apps_it_saw",
        "test_events_are_filtered_and_parameters_validated",
        "test_every_route_refuses_a_missing_or_wrong_token",
        "test_get_apps_lists_provider_apps_merged_with_the_registry",
        "test_manual_start_and_stop_go_through_the_lifecycle",
        "test_metrics_move_when_requests_flow",
        "test_provider_api_calls_and_errors_are_counted_and_health_tells_them",
        "test_while_the_api_is_off_the_headers_change_nothing",
        "test_without_the_target_header_a_request_goes_to_its_app",
    },
    "test_websocket_frames.py": {
        "test_boundaries_are_found_in_any_split",
        "test_close_frames_say_1001_going_away_masked_towards_the_app",
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module, name = item.path.name, getattr(item, "originalname", item.name)
        if (
            module.startswith("test_e2e_")
            or "gunicorn_factory" in getattr(item, "fixturenames", ())
            or module in E2E_MODULES
            or name in E2E_TESTS.get(module, ())
        ):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def gunicorn_factory(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start ``gunicorn app:app`` instances; each gets the test's config file and state dir by default."""
    started: list[Gunicorn] = []
    state_dir = tmp_path / "state"

    def start(env: dict[str, str] | None = None, wait: bool = True, name: str = "paastis") -> Gunicorn:
        full = {
            "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
            "PAASTIS_STATE_DIR": str(state_dir),
            "WEB_CONCURRENCY": "1",
            **(env or {}),
        }
        server = Gunicorn(full, tmp_path, name)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()
    kill_local_apps(state_dir)


@pytest.fixture(autouse=True)
def _restore_paastis_logger() -> Iterator[None]:
    """``create_app`` configures the ``paastis`` logger (no propagation); undo it so ``caplog`` works in later tests."""
    logger = logging.getLogger("paastis")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture
def paastis_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` for the ``paastis`` logger, which does not propagate once :mod:`paastis.logs` configured it."""
    logger = logging.getLogger("paastis")
    propagate = logger.propagate
    logger.propagate = False  # one copy of each record, whether or not create_app ran before
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="paastis")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis key prefix of this test's own on the shared server; only its keys are deleted afterwards."""
    value = unique_prefix(request.node.module.__name__.rsplit(".", 1)[-1])
    yield value
    delete_prefix(SHARED_URL, value)


@pytest.fixture
def paastis_for(tmp_path: Path, gunicorn_factory: Callable[..., Gunicorn]) -> Callable[..., Gunicorn]:
    """Start paastis against a fake PaaS platform (anything with ``paastis_env()``), no local apps."""

    def start(platform: Any, **extra: str) -> Gunicorn:
        write_config(tmp_path)
        return gunicorn_factory({**platform.paastis_env(), "PROVIDER_OPERATION_TIMEOUT": "30", **extra})

    return start
