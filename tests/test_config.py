"""Settings from the environment: read once, checked, and the server refuses to start on a bad one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgserve import config
from imgserve.testing import BENTOML, server_environ, start_server
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (config.ENV_MAX_BATCH_SIZE, "-3", "CLASSIFIER_MAX_BATCH_SIZE='-3': must be a whole number from 1 to 1024"),
        (config.ENV_MAX_BATCH_SIZE, "8.5", "must be a whole number from 1 to 1024"),
        (config.ENV_REQUEST_TIMEOUT_S, "one minute", "CLASSIFIER_REQUEST_TIMEOUT_S='one minute': must be a number"),
        (config.ENV_REQUEST_TIMEOUT_S, "nan", "must be a number from 0.1 to 86400.0"),
        (config.ENV_MAX_CONCURRENT, "0", "CLASSIFIER_MAX_CONCURRENT_REQUESTS='0': must be a whole number from 1"),
        (config.ENV_DECODE_THREADS, "100000", "CLASSIFIER_DECODE_THREADS='100000'"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name_and_range(variable, value, message):
    result = subprocess.run(
        [sys.executable, "-c", "import imgserve.config"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", variable: value},
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr


def test_settings_at_the_edges_of_their_range_are_taken_and_one_past_them_refused():
    assert config.Settings.from_env({}) == config.Settings()  # unset: the defaults
    low = config.Settings.from_env({config.ENV_MAX_BATCH_SIZE: "1", config.ENV_REQUEST_TIMEOUT_S: " 0.1 "})
    high = config.Settings.from_env({config.ENV_MAX_BATCH_SIZE: "1024"})
    assert (low.max_batch_size, low.request_timeout_s, high.max_batch_size) == (1, 0.1, 1024)
    for value in ("0", "1025"):
        with pytest.raises(config.SettingsError, match=f"CLASSIFIER_MAX_BATCH_SIZE='{value}'"):
            config.Settings.from_env({config.ENV_MAX_BATCH_SIZE: value})


def test_every_bad_setting_is_named_in_one_message():
    with pytest.raises(config.SettingsError) as refused:
        config.Settings.from_env({config.ENV_MAX_UPLOADS: "-1", config.ENV_BODY_TIMEOUT_S: "inf"})
    assert "CLASSIFIER_MAX_UPLOADS='-1': must be a whole number from 1 to 100000" in str(refused.value)
    assert "CLASSIFIER_BODY_TIMEOUT_S='inf': must be a number from 0.1 to 3600.0" in str(refused.value)


def test_the_api_key_is_taken_without_the_blanks_around_it_and_an_unsendable_one_stops_the_server():
    """A key from a file or a form with its newline locked every client out: no header carries the newline."""
    assert config.api_key({}) == ""
    assert config.api_key({config.ENV_API_KEY: " s3cret-key\n"}) == "s3cret-key"
    with pytest.raises(config.SettingsError, match=r"CLASSIFIER_API_KEY=' \\n': blank; set a long random string"):
        config.api_key({config.ENV_API_KEY: " \n"})
    with pytest.raises(config.SettingsError, match="CLASSIFIER_API_KEY holds characters an HTTP header cannot carry"):
        config.api_key({config.ENV_API_KEY: "schlüssel"})


@pytest.mark.parametrize(
    ("cpu_max", "expected"), [("200000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)]
)
def test_threads_follow_the_containers_cpu_quota(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    unlimited = config.available_cpus(tmp_path / "missing")
    assert config.available_cpus(path) == (min(expected, unlimited) if expected else unlimited)


@pytest.mark.serve
def test_a_server_with_a_bad_setting_does_not_start_and_says_why(default_model, tmp_path):
    with pytest.raises(RuntimeError, match="CLASSIFIER_MAX_LATENCY_MS='soon': must be a whole number"):
        start_server(default_model, tmp_path, {config.ENV_MAX_LATENCY_MS: "soon"})


@pytest.mark.serve
@pytest.mark.parametrize(
    ("argv", "env", "shown"),
    [
        ([], {"BENTOML_PORT": "80800"}, "80800"),  # the image's $PORT, a typo of 8080: was bound as 15264
        (["--port", "-1"], {}, "-1"),  # make serve's PORT: was a socket.gaierror traceback
    ],
)
def test_a_port_that_is_no_tcp_port_stops_the_server_in_one_line(default_model, argv, env, shown):
    result = subprocess.run(
        [BENTOML, "serve", "service:ImageClassifier", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**server_environ(default_model), **env},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"'--port' (env var: 'BENTOML_PORT'): {shown} is not a TCP port: give one from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr
