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
