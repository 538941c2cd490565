"""Configuration: YAML file, environment overrides, clear validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import ConfigError, SluiceConfig, env_overrides, load_config


def test_defaults_need_no_file() -> None:
    config = load_config(env={})
    assert isinstance(config, SluiceConfig)
    assert config.server.port == 8080
    assert config.server.max_body_bytes == 10 * 1024 * 1024
    assert config.upstream.connect_timeout_s == 5.0


def test_yaml_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(
        "server: {port: 9000, host: 0.0.0.0}\n"
        "upstream: {max_retries: 1}\n"
        "endpoints:\n  - url: http://10.0.0.1:8000/\n    models: [llama]\n"
    )
    env = {"SLUICE_PORT": "9100", "SLUICE__UPSTREAM__IDLE_READ_TIMEOUT_S": "30"}
    config = load_config(path, env=env, overrides={"upstream.max_retries": 3})
    assert config.server.port == 9100  # shortcut variable beats the file
    assert config.server.host == "0.0.0.0"
    assert config.upstream.idle_read_timeout_s == 30.0
    assert config.upstream.max_retries == 3
    assert config.endpoints[0].url == "http://10.0.0.1:8000"  # trailing slash dropped
    assert config.endpoints[0].models == ["llama"]


def test_nested_environment_values_are_parsed_as_yaml() -> None:
    found = env_overrides(
        {"SLUICE__ROUTING__OPTIONS__CACHE_THRESHOLD": "0.3", "SLUICE__SCRAPER__ENABLED": "false"}
    )
    assert found == {"routing.options.cache_threshold": 0.3, "scraper.enabled": False}


def test_every_error_is_named_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: {port: 70000, colour: blue}\nendpoints: [{url: ftp://x}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message and "3 error(s)" in message
    assert "server.port" in message and "70000" in message
    assert "server.colour" in message and "Extra inputs are not permitted" in message
    assert "endpoints.0.url" in message and "http://" in message


def test_unreadable_and_non_mapping_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(path, env={})
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})


def test_bad_environment_value_is_reported_like_a_file_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(env={"SLUICE_PORT": "not-a-port"})
