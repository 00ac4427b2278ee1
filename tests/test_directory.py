"""The directory: requests for unknown names are answered from a cache, not by listing again."""

import threading
from pathlib import Path

from paastis.config import Settings
from paastis.directory import Directory
from paastis.providers.local import LocalProvider
from paastis.rules import Rules, load_config_file
from tests.support import wait_until, write_config


class CountingLocalProvider(LocalProvider):
    """The real local provider, counting how often it is asked for its list."""

    listings = 0

    def list_apps(self):
        self.listings += 1
        return super().list_apps()


def build(tmp_path: Path, ttl: float, rules=None) -> tuple[Directory, CountingLocalProvider]:
    config_file = write_config(
        tmp_path, [{"name": "shop-production-eu", "url": "http://127.0.0.1:9", "command": "true"}], rules
    )
    settings = Settings.from_env(
        {"PAASTIS_CONFIG_FILE": str(config_file), "PAASTIS_STATE_DIR": str(tmp_path / "s")}, dotenv=False
    )
    config = load_config_file(config_file)
    provider = CountingLocalProvider.from_settings(settings, config)
    rules = Rules(settings, config.get("rules"))
    return Directory(provider, rules, ttl), provider


def test_a_flood_of_unknown_names_lists_at_most_once_per_ttl(tmp_path):
    directory, provider = build(tmp_path, ttl=3600)
    assert directory.resolve("shop-production-eu") is not None
    for i in range(1000):
        assert directory.resolve(f"random-{i}") is None
    assert provider.listings == 1


def test_a_stale_cache_is_refreshed_for_a_missing_name(tmp_path):
    directory, provider = build(tmp_path, ttl=0)
    directory.resolve("nope")
    directory.resolve("nope")
    assert provider.listings == 2


def test_a_rule_maps_a_key_to_the_provider_app(tmp_path):
    directory, _ = build(tmp_path, ttl=60, rules=[{"pattern": "shop", "app_name": "shop-production-eu"}])
    assert directory.resolve("shop").name == "shop-production-eu"


def test_forget_drops_an_app_until_the_next_listing(tmp_path):
    directory, _ = build(tmp_path, ttl=3600)
    directory.refresh()
    directory.forget("shop-production-eu")
    assert directory.resolve("shop-production-eu") is None
    directory.refresh()
    assert directory.resolve("shop-production-eu") is not None


class SlowListingProvider(CountingLocalProvider):
    """Lists slowly, with the listing under way made visible, to race readers against it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listing = threading.Event()
        self.release = threading.Event()

    def list_apps(self):
        apps = super().list_apps()
        if self.listings > 1:
            self.listing.set()
            self.release.wait(10)
        return apps


def test_readers_never_wait_on_someone_elses_listing_nor_see_half_a_list(tmp_path):
    config_file = write_config(
        tmp_path, [{"name": f"app-{i}", "url": f"http://127.0.0.1:{10000 + i}", "command": "true"} for i in range(300)]
    )
    settings = Settings.from_env(
        {"PAASTIS_CONFIG_FILE": str(config_file), "PAASTIS_STATE_DIR": str(tmp_path / "s")}, dotenv=False
    )
    config = load_config_file(config_file)
    provider = SlowListingProvider.from_settings(settings, config)
    directory = Directory(provider, Rules(settings, None), ttl=0)
    directory.refresh()
    lister = threading.Thread(target=directory.refresh)
    lister.start()
    try:
        assert provider.listing.wait(10)
        # The listing is under way and blocked: readers answer from the published list meanwhile.
        answers = []
        reader = threading.Thread(target=lambda: answers.extend([directory.resolve("app-7"), directory.resolve("x")]))
        reader.start()
        wait_until(lambda: len(answers) == 2, 5, what="a reader to answer while the listing is under way")
        assert answers[0].name == "app-7" and answers[1] is None
        errors = []

        def read() -> None:
            for _ in range(200):
                try:
                    assert len(directory.apps()) == 300
                except Exception as error:  # noqa: BLE001 - collected for the assertion below
                    errors.append(error)

        readers = [threading.Thread(target=read) for _ in range(4)]
        for reader in readers:
            reader.start()
        provider.release.set()  # the new list is published while they read
        for reader in readers:
            reader.join(10)
        assert errors == []
    finally:
        provider.release.set()
        lister.join(10)
    assert provider.listings == 2  # the readers' misses did not list again behind the lister


def test_what_paastis_did_stays_in_the_list_until_a_listing_that_began_after_it(tmp_path):
    directory, provider = build(tmp_path, ttl=3600)
    directory.refresh()
    slow = SlowListingProvider(list(provider.apps.values()), provider.state_dir, provider.operation_timeout)
    directory.provider = slow
    slow.listings = 1  # the next listing is slow
    shop = directory.cached("shop-production-eu")
    assert shop.status is None  # the local provider's list does not say
    listing = threading.Thread(target=directory.refresh)
    listing.start()
    wait_until(slow.listing.is_set, 10, what="the slow listing to begin")
    directory.note(shop, "stopped")  # paastis stopped it while the platform was listing
    assert directory.cached("shop-production-eu").status == "stopped"  # seen at once, without a listing
    slow.release.set()
    listing.join(10)
    assert directory.cached("shop-production-eu").status == "stopped"  # the older listing does not undo it
    directory.refresh()  # began after the stop: the platform's own word again
    assert directory.cached("shop-production-eu").status is None


def test_an_explicit_refresh_is_refused_while_the_last_listing_is_recent(tmp_path):
    directory, provider = build(tmp_path, ttl=3600)
    assert directory.age() == float("inf")
    assert directory.refresh_unless_fresh(60) is not None
    assert directory.refresh_unless_fresh(60) is None  # listed less than a minute ago
    assert provider.listings == 1
    assert directory.refresh_unless_fresh(0) is not None
    assert provider.listings == 2
    assert directory.listed_at_wall is not None
