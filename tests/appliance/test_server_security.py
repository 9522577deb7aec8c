# Run: .venv/bin/pytest tests/appliance/test_server_security.py
"""API keys (hashed at rest, every route but health), loopback by default, no debug in
production, and configuration errors that name the setting."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from appliance.errors import UserFacingError
from appliance.generation.fake import FakeGenerator
from appliance.server import ServeConfig, create_app
from appliance.server.auth import KeyStore, add_key, hash_key, revoke_key
from appliance.server.runtime import Runtime, answer_policy
from tests.appliance import server_harness
from tests.appliance.server_harness import offline_env

# Shared fixtures (tests/appliance/server_harness.py), bound here so pytest finds them.
serve = server_harness.serve


PROTECTED = [
    ("GET", "/v1/models", None),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "retrieval": False},
    ),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/v1/retrieve", {"query": "x"}),
    ("GET", "/v1/documents", None),
    ("GET", "/metrics", None),
]


def test_cli_adds_a_key_shown_once_and_stored_hashed(tmp_path: Path):
    state = tmp_path / "state"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "serve",
            "--state-dir",
            str(state),
            "--add-key",
            "terminal-1",
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=60,
        check=True,
    ).stdout
    key = next(line for line in out.splitlines() if line.startswith("ex-"))
    path = state / "api_keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert key not in stored and hash_key(key) in stored
    assert KeyStore.load(path).check(key) == "terminal-1"
    listed = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--state-dir", str(state), "--list-keys"],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=60,
        check=True,
    ).stdout
    assert "terminal-1" in listed and key not in listed


def test_every_route_but_health_needs_a_key(serve, tmp_path: Path):
    key = add_key(tmp_path / "state" / "api_keys.json", "t1")
    server = serve(generator=FakeGenerator())
    for method, path, body in PROTECTED:
        r = requests.request(method, server.url + path, json=body, timeout=10)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = requests.request(
            method,
            server.url + path,
            json=body,
            timeout=10,
            headers={"Authorization": "Bearer ex-wrong"},
        )
        assert r.status_code == 401, path
        r = requests.request(
            method,
            server.url + path,
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code != 401, path
    assert requests.get(server.url + "/v1/models", headers={"X-API-Key": key}).status_code == 200
    for path in ("/healthz", "/readyz", "/", "/ui/app.js"):
        assert requests.get(server.url + path).status_code == 200, path


def test_keys_are_reread_on_reload(serve, tmp_path: Path):
    keys_file = tmp_path / "state" / "api_keys.json"
    old = add_key(keys_file, "old")
    gen = FakeGenerator()

    def loader(config):
        return Runtime(gen, None, None, gen.model_id, answer_policy(config, None))

    server = serve(generator=gen, loader=loader)
    auth = lambda k: {"Authorization": f"Bearer {k}"}  # noqa: E731
    new = add_key(keys_file, "new")
    revoke_key(keys_file, "old")
    assert requests.get(server.url + "/v1/models", headers=auth(old)).status_code == 200
    assert server.service.reload()
    assert requests.get(server.url + "/v1/models", headers=auth(old)).status_code == 401
    assert requests.get(server.url + "/v1/models", headers=auth(new)).status_code == 200


def test_key_check_compares_every_entry():
    keys = [("a", "ex-aaa"), ("b", "ex-bbb"), ("c", "ex-ccc")]
    from appliance.server.auth import StoredKey

    store = KeyStore([StoredKey(n, hash_key(k), "") for n, k in keys])
    assert [store.check(k) for _, k in keys] == ["a", "b", "c"]
    assert store.check("ex-ddd") is None and store.check("") is None and store.check(None) is None


def test_binds_loopback_by_default_and_refuses_public_without_keys(tmp_path: Path):
    assert ServeConfig().host == "127.0.0.1"
    config = ServeConfig(host="0.0.0.0", state_dir=tmp_path)
    with pytest.raises(UserFacingError, match="without API keys"):
        create_app(config, generator=FakeGenerator())
    add_key(config.keys_path, "t1")
    assert create_app(config, generator=FakeGenerator()) is not None
    # The command refuses too, before loading anything, and says what to do.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--state-dir",
            str(tmp_path / "other"),
            "--bundle",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--add-key" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_cannot_be_switched_on_in_production(tmp_path: Path):
    with pytest.raises(UserFacingError, match="debug"):
        ServeConfig.load({"debug": True, "state_dir": tmp_path}, env={"EXPERT_ENV": "production"})
    with pytest.raises(UserFacingError, match="debug"):
        ServeConfig.load({"debug": True, "state_dir": tmp_path}, env={"INVOCATION_ID": "abc"})
    with pytest.raises(UserFacingError, match="debug"):
        ServeConfig(debug=True, host="0.0.0.0")
    with pytest.raises(UserFacingError, match="EXPERT_DEBUG"):
        ServeConfig.load(env={"EXPERT_DEBUG": "1", "EXPERT_ENV": "production"})
    dev = ServeConfig.load({"debug": True, "state_dir": tmp_path}, env={})
    assert dev.debug and not dev.production
    app = create_app(ServeConfig(state_dir=tmp_path), generator=FakeGenerator())
    assert app.debug is False


def test_settings_come_from_env_and_bad_ones_are_named(tmp_path: Path):
    env = {"EXPERT_SLOTS": "3", "EXPERT_PORT": "9000", "EXPERT_STATE_DIR": str(tmp_path)}
    c = ServeConfig.load({"port": 9100}, env=env)
    assert (c.slots, c.port, c.state_dir) == (3, 9100, tmp_path)
    assert ServeConfig.load(env={"STATE_DIRECTORY": "/var/lib/x"}).state_dir == Path("/var/lib/x")
    with pytest.raises(UserFacingError, match="EXPERT_SLOTS"):
        ServeConfig.load(env={"EXPERT_SLOTS": "many"})
    with pytest.raises(UserFacingError, match="port"):
        ServeConfig.load(env={"EXPERT_PORT": "99999"})
    with pytest.raises(UserFacingError, match="abstain_threshold"):
        ServeConfig(abstain_threshold=float("nan"))
    with pytest.raises(UserFacingError, match="max_tokens_default"):
        ServeConfig(max_tokens_default=5000)


def test_a_corrupt_key_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps({"format_version": 99, "keys": []}))
    with pytest.raises(UserFacingError, match="format"):
        KeyStore.load(path)
    path.write_text("{")
    with pytest.raises(UserFacingError, match="unreadable"):
        KeyStore.load(path)
