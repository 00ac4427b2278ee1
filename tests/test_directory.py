"""The directory: requests for unknown names are answered from a cache, not by listing again."""

from pathlib import Path

from paastis.config import Settings
from paastis.directory import Directory
from paastis.providers.local import LocalProvider
from paastis.rules import Rules, load_config_file
from tests.support import write_config


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
