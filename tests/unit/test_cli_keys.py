"""`recofleet keys create|list|revoke` on the gateway's store, and what `recofleet run` says
about the admin key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import _print_unseen_key, _print_welcome, _seed_keys, main
from services.common.settings import FleetSettings
from services.gateway.access_keys import ENV_KEY_ID, Seeded, open_key_store
from services.gateway.settings import GatewaySettings

ADMIN_VALUE = "cli-tests-admin-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECOFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RECOFLEET_ADMIN_KEY", raising=False)
    monkeypatch.delenv("RECOFLEET_GATEWAY_DATABASE_URL", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_key(key: str):
    store = open_key_store(FleetSettings(), GatewaySettings())
    try:
        return next(k for k in store.all() if k.matches(key))
    finally:
        store.close()


def test_create_prints_the_key_alone_on_the_last_line(capsys, data_dir: Path):
    code, out, err = run(
        capsys, "keys", "create", "--scope", "profiles:read", "--scope", "events:write",
        "--name", "shop frontend",
    )  # fmt: skip
    assert code == 0
    key = out.splitlines()[-1]
    assert out == f"{key}\n" and key.startswith("rf_")
    assert "shown this once" in err and key not in err
    record = stored_key(key)
    assert record.scopes == {"profiles:read", "events:write"} and record.name == "shop frontend"
    assert (data_dir / "gateway.db").is_file()


def test_list_shows_every_key_and_never_a_secret(capsys):
    _, first, _ = run(capsys, "keys", "create", "--scope", "admin", "--name", "ops")
    _, second, _ = run(capsys, "keys", "create", "--scope", "recommendations:read")
    keys = [first.strip(), second.strip()]
    ids = [key.split("_")[1] for key in keys]
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "name", "scopes", "created", "revoked"]
    assert lines[1].split()[:3] == [ids[0], "ops", "admin"]
    assert lines[2].split()[:3] == [ids[1], "-", "recommendations:read"]
    assert lines[-1] == "2 keys, 2 active"
    for key in keys:
        assert key not in out and key.split("_", 2)[2] not in out


def test_revoke_marks_the_key_and_says_so(capsys):
    _, out, _ = run(capsys, "keys", "create", "--scope", "admin")
    key = out.strip()
    ident = key.split("_")[1]
    code, out, _ = run(capsys, "keys", "revoke", ident)
    assert code == 0 and "within a second" in out
    assert not stored_key(key).active
    _, listed, _ = run(capsys, "keys", "list")
    assert listed.splitlines()[-1] == "1 keys, 0 active"
    code, _, err = run(capsys, "keys", "revoke", "no-such-key")
    assert code == 1 and "no access key 'no-such-key'" in err


def test_an_unknown_scope_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--scope", "events:read"])
    assert exited.value.code == 2
    assert "invalid choice: 'events:read'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["keys", "list"], ["up"]])
def test_a_short_admin_key_is_refused_with_a_clear_message(
    capsys, monkeypatch, data_dir: Path, command: list[str]
):
    monkeypatch.setenv("RECOFLEET_ADMIN_KEY", "changeme")
    code, _, err = run(capsys, *command)
    assert code == 1
    assert "RECOFLEET_ADMIN_KEY" in err and "at least 32 characters" in err
    assert "Traceback" not in err
    # Refused before anything was loaded, trained or stored.
    assert list(data_dir.iterdir()) == []


def test_a_new_install_gets_an_admin_key_shown_once_with_a_ready_curl(capsys):
    seeded = _seed_keys(FleetSettings())
    assert seeded.new_key is not None
    _print_welcome(FakeRunner(), "17850", seeded)
    out = capsys.readouterr().out
    assert out.count(seeded.new_key) == 1
    assert f"export RECOFLEET_KEY={seeded.new_key}" in out
    assert (
        'curl -H "Authorization: Bearer $RECOFLEET_KEY" '
        "'http://127.0.0.1:8080/v1/members/17850/recommendations?limit=10'" in out
    )
    assert stored_key(seeded.new_key).allows("admin")
    # The next start finds a key: nothing is made, nothing shown.
    again = _seed_keys(FleetSettings())
    assert again.new_key is None
    _print_welcome(FakeRunner(), "17850", again)
    out = capsys.readouterr().out
    assert "rf_" not in out and "recofleet keys create --scope admin" in out


def test_with_an_admin_key_set_the_welcome_uses_it(capsys, monkeypatch):
    monkeypatch.setenv("RECOFLEET_ADMIN_KEY", ADMIN_VALUE)
    seeded = _seed_keys(FleetSettings())
    assert seeded.new_key is None and seeded.key is not None and seeded.key.id == ENV_KEY_ID
    _print_welcome(FakeRunner(), "17850", seeded)
    out = capsys.readouterr().out
    assert '-H "Authorization: Bearer $RECOFLEET_ADMIN_KEY"' in out and ADMIN_VALUE not in out


def test_a_key_made_for_a_fleet_that_did_not_start_is_shown_anyway(capsys):
    seeded = _seed_keys(FleetSettings())
    _print_unseen_key(seeded)
    assert f"export RECOFLEET_KEY={seeded.new_key}" in capsys.readouterr().out
    _print_unseen_key(Seeded())
    assert capsys.readouterr().out == ""


class FakeRunner:
    gateway_url = "http://127.0.0.1:8080"
