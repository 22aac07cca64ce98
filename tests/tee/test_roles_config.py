"""The allow-list as configuration: provisioning options, `edb device access`, the single-uid note."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tee_helpers import Device, TeeProcess

from edb.errors import TeeError
from edb_tee.access import describe, summary
from edb_tee.config import AccessConfig, Role, TeeConfig
from edb_tee.provisioning import read_access, set_access


def edb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edb.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_single_uid_default_is_labelled() -> None:
    access = AccessConfig.single_user(1000)
    assert set(access.roles) == {"installer", "runner", "admin"} and access.single_uid() == 1000
    assert describe(access)["mode"] == "single-uid" and "not enforced" in describe(access)["note"]
    assert "development default" in summary(access)
    split = AccessConfig.per_role({"installer": Role(frozenset({10001})), "runner": Role(frozenset({10003}))})
    assert split.single_uid() is None and describe(split)["mode"] == "per-role" and "note" not in describe(split)
    assert split.roles["admin"] == Role()  # a role not given is held by nobody
    # one uid in every role through gids as well is not "single-uid": a gid widens it
    assert AccessConfig({n: Role(frozenset({1}), frozenset({5})) for n in ("installer", "runner", "admin")}
                        ).single_uid() is None


def test_access_json_round_trip_and_refusals() -> None:
    access = AccessConfig.per_role({"installer": Role(frozenset({10001}), frozenset({20})),
                                    "runner": Role(frozenset({10003}))}, socket_gid=10001)
    assert AccessConfig.from_json(json.loads(json.dumps(access.to_json()))) == access
    legacy = {"roles": {"installer": {"uids": [1], "gids": []}, "runner": {"uids": [1], "gids": []}},
              "tas": {"device": ["installer", "runner"], "installer": ["installer"], "runner": ["runner"]}}
    old = AccessConfig.from_json(legacy)  # a device provisioned before socketGid and the admin role
    assert old.socket_gid is None and old.roles["admin"] == Role() and old.tas["device"] == ("installer", "runner")
    bad = [
        {**legacy, "extra": 1},
        {**legacy, "socketGid": -1},
        {**legacy, "socketGid": True},
        {**legacy, "roles": {"runner": {"uids": [2**32 - 1], "gids": []}}},  # (uid_t)-1
        {**legacy, "tas": {"device": ["nobody-role"]}},
    ]
    for d in bad:
        with pytest.raises(TeeError) as err:
            AccessConfig.from_json(d)
        assert err.value.code == "TEE_CONFIG_INVALID"
    with pytest.raises(TeeError) as err:
        AccessConfig.per_role({"root": Role(frozenset({0}))})
    assert err.value.code == "TEE_CONFIG_INVALID"


def test_provision_options_write_the_allow_list(tmp_path: Path) -> None:
    out = edb("device", "provision", "--device-id", "dev-roles", "--state-dir", str(tmp_path), "--json",
              "--installer-uid", "10001", "--runner-uid", "10003", "--runner-uid", "10004", "--admin-uid", "0",
              "--socket-gid", "10001")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["access"]
    assert shown["mode"] == "per-role" and shown["roles"]["runner"]["uids"] == [10003, 10004]
    config = tmp_path / "devices" / "dev-roles" / "tee" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600" and oct(config.parent.stat().st_mode & 0o777) == "0o700"
    access = TeeConfig.load(config).access
    assert access.roles["installer"].uids == {10001} and access.roles["admin"].uids == {0}
    assert access.socket_gid == 10001
    default = edb("device", "provision", "--device-id", "dev-dev", "--state-dir", str(tmp_path), "--json")
    assert json.loads(default.stdout)["access"]["mode"] == "single-uid"


def test_access_changes_only_while_the_service_is_stopped(make_device) -> None:
    device: Device = make_device()
    layout = device.layout
    state = str(device.state_dir)
    tee = TeeProcess(device).start()
    try:
        out = edb("device", "access", "set", "--device-id", layout.root.name, "--state-dir", state,
                  "--runner-uid", "10003")
        assert out.returncode != 0 and "TEE_STATE_LOCKED" in out.stderr
        assert read_access(layout).single_uid() == os.getuid()  # nothing changed
        log = tee.log.read_text()
        assert "single uid" in log and "development default" in log  # the start-up log says so
        info = edb("tee", "info", "--device-dir", str(layout.root))
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["access"]["mode"] == "single-uid"  # ... and `edb tee info`
    finally:
        tee.stop()
    out = edb("device", "access", "set", "--device-id", layout.root.name, "--state-dir", state,
              "--runner-uid", "10003", "--socket-gid", "10001")
    assert out.returncode == 0, out.stderr
    changed = read_access(layout)
    assert changed.roles["runner"].uids == {10003} and changed.roles["installer"].uids == {os.getuid()}
    assert changed.socket_gid == 10001
    shown = json.loads(edb("device", "access", "show", "--device-id", layout.root.name, "--state-dir", state).stdout)
    assert shown["mode"] == "per-role" and shown["socket"] == "0660, group 10001"
    before = TeeConfig.load(layout.config).measured
    set_access(layout, AccessConfig.single_user(os.getuid()))
    assert TeeConfig.load(layout.config).measured == before  # the measurement does not depend on it
    assert edb("device", "access", "set", "--device-id", layout.root.name, "--state-dir", state,
               "--single-user", "0", "--runner-uid", "1").returncode != 0
