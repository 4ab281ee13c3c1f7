"""FrontendConfig from defaults, file, environment and flags."""

from __future__ import annotations

import pytest

from bismuth_core.config import ConfigError, load_config
from bismuth_fe.config import FrontendConfig, config_from_args


def test_defaults_are_the_single_node_layout():
    config = load_config(FrontendConfig, env={})
    assert config.public_address() == ("127.0.0.1", 8000)
    assert config.admin_address() == ("127.0.0.1", 8003)
    assert (config.zookeeper, config.zookeeper_env, config.agent_port) == (
        "127.0.0.1:2181",
        "default",
        8001,
    )
    assert (config.max_body_size, config.retries, config.max_header_size) == (10485760, 2, 8192)
    assert str(config.control_socket) == "/run/bismuth/fe/control.sock"
    assert config.trusted_proxies == ()


def test_flags_override_environment_and_file(tmp_path):
    file = tmp_path / "fe.toml"
    file.write_text('bind = "127.0.0.1:9000"\nretries = 5\nmax-body-size = 100\n')
    config = config_from_args(
        [
            "--config",
            str(file),
            "--bind",
            "127.0.0.2:9100",
            "--admin-bind",
            "127.0.0.2:9103",
            "--zookeeper",
            "127.0.0.1:2281",
            "--zookeeper-env",
            "staging",
            "--log-level",
            "debug",
        ],
        env={"BISMUTH_RETRIES": "3", "BISMUTH_AGENT_PORT": "9001"},
    )
    assert config.public_address() == ("127.0.0.2", 9100)
    assert config.admin_address() == ("127.0.0.2", 9103)
    assert (config.zookeeper, config.zookeeper_env, config.log_level) == (
        "127.0.0.1:2281",
        "staging",
        "debug",
    )
    assert (config.retries, config.agent_port, config.max_body_size) == (3, 9001, 100)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BISMUTH_RETRIES": "-1"}, "retries"),
        ({"BISMUTH_CONNECT_TIMEOUT": "0"}, "connect_timeout"),
        ({"BISMUTH_MAX_BODY_SIZE": "0"}, "max_body_size"),
        ({"BISMUTH_AGENT_PORT": "70000"}, "agent_port"),
        ({"BISMUTH_BIND": "127.0.0.1:port"}, "bind"),
        ({"BISMUTH_ADMIN_BIND": ":8003"}, "admin_bind"),
        ({"BISMUTH_TRUSTED_PROXIES": "10.0.0.0/8,not-a-network"}, "trusted_proxies"),
        ({"BISMUTH_RUN_DIR": "run"}, "run_dir"),
        ({"BISMUTH_MAX_HEADER_SIZE": "100"}, "max_header_size"),
        ({"BISMUTH_NGINX_USER": "root; daemon on"}, "nginx_user"),
        ({"BISMUTH_CLIENT_TIMEOUT": "0"}, "client_timeout"),
    ],
)
def test_bad_values_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        load_config(FrontendConfig, env=env)


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(["--bind", "127.0.0.1:99999"], env={})
    assert exit_info.value.code == 2
    assert "bind" in capsys.readouterr().err
