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
from tests.appliance.server_harness import offline_env

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
    ("POST", "/v1/documents", {"name": "a.md", "text": "x"}),
    ("DELETE", "/v1/documents/some-doc", None),
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


# --- review findings (issue 12) ------------------------------------------------------------


def test_routes_that_write_documents_need_a_key(serve, small_index, embedder, tmp_path: Path):
    from tests.appliance.server_harness import writable_retriever

    key = add_key(tmp_path / "state" / "api_keys.json", "t1")
    retr = writable_retriever(small_index, embedder, tmp_path)
    server = serve(generator=FakeGenerator(), retriever=retr, embedder=embedder)
    doc = {"name": "intruder.md", "text": "Planted text about pump P-999."}
    r = requests.post(server.url + "/v1/documents", json=doc, timeout=30)
    assert r.status_code == 401
    r = requests.delete(server.url + "/v1/documents/anything", timeout=30)
    assert r.status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    listed = requests.get(server.url + "/v1/documents", headers=auth, timeout=30).json()["data"]
    assert all(d["path"] != "intruder.md" for d in listed)
    r = requests.post(server.url + "/v1/documents", json=doc, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    doc_id = r.json()["added"][0]
    r = requests.delete(server.url + f"/v1/documents/{doc_id}", headers=auth, timeout=30)
    assert r.status_code == 200


def test_reload_never_leaves_a_public_bind_without_keys(tmp_path: Path):
    """Revoking the last key (or deleting the key file) and reloading must not open a service
    bound beyond loopback: the reload is refused and the old keys stay in force."""
    config = ServeConfig(host="0.0.0.0", state_dir=tmp_path / "state")
    key = add_key(config.keys_path, "only")
    gen = FakeGenerator()

    def loader(cfg):
        return Runtime(gen, None, None, gen.model_id, answer_policy(cfg, None))

    app = create_app(config, generator=gen, loader=loader)  # no socket: the test client
    client = app.test_client()
    svc = app.extensions["expert"]
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=auth).status_code == 200
    revoke_key(config.keys_path, "only")
    assert svc.reload() is False
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=auth).status_code == 200  # old keys kept
    config.keys_path.unlink()
    assert svc.reload() is False
    assert client.get("/v1/models").status_code == 401
    assert 'expert_reloads_total{result="failed"} 2' in svc.metrics.render()


def test_json_routes_require_a_json_content_type(serve, small_index, embedder, tmp_path: Path):
    from tests.appliance.server_harness import post_raw, writable_retriever

    retr = writable_retriever(small_index, embedder, tmp_path)
    server = serve(generator=FakeGenerator(), retriever=retr, embedder=embedder)
    body = json.dumps({"name": "planted.md", "text": "Planted text about pump P-999."}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, raw = post_raw(server.port, "/v1/documents", body, {"Content-Type": ctype})
        assert status == 415, (ctype, raw)
        err = json.loads(raw)["error"]
        assert "application/json" in err["message"] and err["code"] == "unsupported_media_type"
    chat = json.dumps({"messages": [{"role": "user", "content": "x"}], "retrieval": False})
    status, _, _ = post_raw(
        server.port, "/v1/chat/completions", chat.encode(), {"Content-Type": "text/plain"}
    )
    assert status == 415
    assert all(d["path"] != "planted.md" for d in retr.documents())
    status, _, _ = post_raw(
        server.port,
        "/v1/chat/completions",
        chat.encode(),
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 200


def test_cross_site_origin_and_rebinding_host_are_refused(serve, tmp_path: Path):
    server = serve(generator=FakeGenerator())
    body = {"messages": [{"role": "user", "content": "x"}], "retrieval": False}
    url = server.url + "/v1/chat/completions"
    r = requests.post(url, json=body, headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.status_code == 403 and "Origin" in r.json()["error"]["message"]
    r = requests.post(url, json=body, headers={"Origin": "null"}, timeout=10)
    assert r.status_code == 403
    # A DNS-rebinding page: the browser sends the attacker's name as Host.
    r = requests.get(
        server.url + "/v1/models", headers={"Host": f"evil.example:{server.port}"}, timeout=10
    )
    assert r.status_code == 403 and "Host" in r.json()["error"]["message"]
    # The UI's own requests (same origin) and clients that send no Origin still work.
    own = f"http://127.0.0.1:{server.port}"
    assert requests.post(url, json=body, headers={"Origin": own}, timeout=10).status_code == 200
    assert requests.get(server.url + "/", headers={"Origin": own}, timeout=10).status_code == 200
    r = requests.get(server.url + "/v1/models", headers={"Host": f"localhost:{server.port}"})
    assert r.status_code == 200
    assert requests.post(url, json=body, timeout=10).status_code == 200


def test_configured_names_and_origins_are_accepted(serve, tmp_path: Path):
    server = serve(
        generator=FakeGenerator(),
        allowed_hosts="expert.plant.local",
        allowed_origins="https://portal.plant.local",
    )
    headers = {"Host": "expert.plant.local", "Origin": "https://portal.plant.local"}
    assert requests.get(server.url + "/v1/models", headers=headers).status_code == 200
    headers["Origin"] = "https://other.plant.local"
    assert requests.get(server.url + "/v1/models", headers=headers).status_code == 403
    with pytest.raises(UserFacingError, match="allowed_origins"):
        ServeConfig(allowed_origins="portal.plant.local")


def test_a_concurrent_ingest_is_a_conflict_not_a_bad_request(
    serve, small_index, embedder, tmp_path: Path, monkeypatch
):
    from appliance.retrieval import updates
    from appliance.retrieval import versions as V
    from tests.appliance.server_harness import writable_retriever

    monkeypatch.setattr(updates, "API_LOCK_TIMEOUT_S", 0.3, raising=False)
    retr = writable_retriever(small_index, embedder, tmp_path)
    server = serve(generator=FakeGenerator(), retriever=retr, embedder=embedder)
    doc = {"name": "note.md", "text": "Valve V-12 is closed before the pump P-101 is opened."}
    with V.write_lock(retr.index_dir):  # another writer (e.g. `expert ingest`) is busy
        r = requests.post(server.url + "/v1/documents", json=doc, timeout=30)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "index_locked" and "Retry-After" in r.headers
        r = requests.delete(server.url + "/v1/documents/anything", timeout=30)
        assert r.status_code == 409
    assert requests.post(server.url + "/v1/documents", json=doc, timeout=60).status_code == 201


def test_readyz_says_when_the_previous_bundle_is_served(tmp_path: Path):
    gen = FakeGenerator()
    note = "the current bundle failed verification (...); serving the previous bundle bundle-x-1"

    def loader(cfg):
        return Runtime(gen, None, None, gen.model_id, answer_policy(cfg, None), fallback=note)

    app = create_app(ServeConfig(state_dir=tmp_path), loader=loader)
    ready = app.test_client().get("/readyz", headers={"Host": "127.0.0.1"}).get_json()
    assert ready["status"] == "ready" and ready["bundle_fallback"] == note


def test_the_guard_and_the_app_agree_on_public_routes(tmp_path: Path):
    """The guard decides from the path before Flask routes the request: its public paths
    must be exactly the app's public endpoints."""
    from appliance.server.app import PUBLIC_ENDPOINTS
    from appliance.server.guard import PUBLIC_PATHS, PUBLIC_PREFIXES

    app = create_app(ServeConfig(state_dir=tmp_path), generator=FakeGenerator())
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<path:name>", "app.js").replace("<doc_id>", "d")
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        assert public == (rule.endpoint in PUBLIC_ENDPOINTS), rule.rule
