"""Config from the environment: every variable parsed, byte suffixes, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import Config, defaults


def test_from_env_reads_every_setting_and_keeps_defaults_for_the_rest() -> None:
    config = Config.from_env(
        {
            "KERNELSCOPE_PORT": "6000",
            "KERNELSCOPE_DATA_DIR": "/srv/ks",
            "REDIS_URL": "redis://r:6379/2",
            "KERNELSCOPE_MAX_UPLOAD_BYTES": "3GiB",
            "KERNELSCOPE_CHUNK_BYTES": "512KiB",
            "KERNELSCOPE_POLL_INTERVAL": "0.5",
            "KERNELSCOPE_WORKER_TOKEN": "s3cret",
            "KERNELSCOPE_QUEUE": "",  # empty: default
        }
    )
    assert (config.port, config.data_dir, config.redis_url) == (6000, Path("/srv/ks"), "redis://r:6379/2")
    assert config.max_upload_bytes == 3 * 2**30 and config.chunk_bytes == 512 * 1024
    assert config.poll_interval == 0.5 and config.worker_token == "s3cret"
    assert config.queue_name == defaults.QUEUE_NAME and config.max_dataset_bytes == defaults.MAX_DATASET_BYTES
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"KERNELSCOPE_PORT": "fifty"}, "KERNELSCOPE_PORT='fifty'"),
        ({"KERNELSCOPE_MAX_UPLOAD_BYTES": "2 TB"}, "512MiB"),
        ({"KERNELSCOPE_CHUNK_BYTES": "32MiB"}, "at most half of max_message_bytes"),
        ({"KERNELSCOPE_MAX_WORKERS": "0"}, "max_workers must be positive"),
    ],
)
def test_bad_values_say_which_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        Config.from_env(env)


def test_auth_limits_and_fault_settings_come_from_the_environment() -> None:
    config = Config.from_env(
        {
            "KERNELSCOPE_TOKENS": "alice=very-secret-token",
            "KERNELSCOPE_TOKENS_FILE": "/etc/kernelscope/tokens",
            "KERNELSCOPE_TLS_CERT": "/tls/server.crt",
            "KERNELSCOPE_TLS_KEY": "/tls/server.key",
            "KERNELSCOPE_MAX_JOBS_IN_FLIGHT": "7",
            "KERNELSCOPE_WORKER_TIMEOUT": "4.5",
            "KERNELSCOPE_JOB_RETRIES": "0",
            "KERNELSCOPE_REAP_INTERVAL": "0.5",
            "KERNELSCOPE_STREAM_WINDOW_BYTES": "8MiB",
            "KERNELSCOPE_METRICS_PORT": "9090",
        }
    )
    assert (config.tokens_file, config.tls_cert, config.tls_key) == ("/etc/kernelscope/tokens", "/tls/server.crt", "/tls/server.key")
    assert (config.max_jobs_in_flight, config.worker_timeout, config.job_retries, config.reap_interval) == (7, 4.5, 0, 0.5)
    assert config.stream_window_bytes == 8 * 2**20 and config.metrics_port == 9090
    assert "very-secret-token" not in repr(config)
    with pytest.raises(ValueError, match="metrics_port"):
        Config.from_env({"KERNELSCOPE_METRICS_PORT": "70000"})
