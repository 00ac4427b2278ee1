"""Secret values are known, masked in text, and kept out of children's environments."""

from __future__ import annotations

from paastis.secrecy import Redactor, base_environment, mask_passwords, mask_url, secret_values


def test_secret_values_include_the_passwords_inside_secret_urls():
    values = secret_values(
        {
            "ROUTING_SYSTEM_API_TOKEN": "admin-token-0123456789",
            "DATABASE_URL": "postgresql://me:p%40ss-word@db/x",
            "REDIS_URL": "redis://:hunter22@cache:6379",
            "LOG_LEVEL": "info",
            "PROVIDER_REGION": "osc-fr1",
        }
    )
    assert {"admin-token-0123456789", "p%40ss-word", "p@ss-word", "hunter22"} <= set(values)
    assert "info" not in values and "osc-fr1" not in values


def test_the_redactor_masks_every_known_value_and_any_url_password():
    redact = Redactor.of({"PAASTIS_SECRET_KEY": "k" * 40, "DATABASE_URL": "postgresql://u:pw-1234@db/x"})
    assert redact(f"key={'k' * 40} url=postgresql://u:pw-1234@db/x") == "key=*** url=***"  # the whole URL is a secret
    assert redact("pw-1234 alone") == "*** alone"
    assert redact("other redis://x:unknown-pass@h:1/0") == "other redis://x:***@h:1/0"


def test_urls_print_without_their_password():
    assert mask_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://h:6379/0") == "rediss://h:6379/0"
    assert mask_passwords("connect to postgresql://a:b@c/d failed") == "connect to postgresql://a:***@c/d failed"


def test_the_base_environment_is_the_documented_names_only():
    environ = {"PATH": "/bin", "HOME": "/root", "TZ": "UTC", "ROUTING_SYSTEM_API_TOKEN": "x" * 20, "OTHER": "1"}
    assert base_environment(environ) == {"PATH": "/bin", "HOME": "/root", "TZ": "UTC"}
