"""Fleets: a profile listing several boards (``testboard.sh up native --hosts 3``) and an Ansible
INI inventory; every host is deployed to concurrently, one table row each, one stopped host fails
its row while the others complete, and the exit status says so."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import TESTBOARD, _testboard
from fdq.device.bundle import load_bundle
from fdq.host.cli import deploy_main
from fdq.host.fleet import on_each
from fdq.host.targets import load_targets


@pytest.fixture(scope="module")
def fleet(sshd):
    """Three native boards in one profile (``sshd`` first, for its skip rule)."""
    with _testboard("native", f"fleet-{uuid.uuid4().hex[:8]}", "--hosts", "3", "--python", sys.executable) as board:
        yield board


def _stop_host(fleet, number: int) -> None:
    """The listener of one host and its connections end: that board is off."""
    pids = subprocess.run(["bash", str(TESTBOARD), "pids", fleet["name"], str(number)], capture_output=True,
                          text=True, check=True).stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)


def _workdir(fleet, number: int) -> Path:
    return fleet["home"] / f"host{number}" / "home" / "fdq"


def test_fleet_deploy_reports_each_host_and_a_stopped_one_fails_its_row(fleet, slim_fp32_bundle, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    targets = load_targets(str(fleet["profile"]))
    assert [t.port for t in targets] == [h["port"] for h in fleet["fields"]["hosts"]]
    _stop_host(fleet, 2)
    assert deploy_main(["--target", str(fleet["profile"]), str(slim_fp32_bundle)]) == 1
    out, err = capsys.readouterr()
    rows = {t.name: next(ln for ln in out.splitlines() if t.name in ln) for t in targets}
    assert "ok" in rows[targets[0].name] and "ok" in rows[targets[2].name]
    assert "connection refused" in rows[targets[1].name] and "failed" in rows[targets[1].name]
    assert err.strip().splitlines()[-1] == f"fdq-deploy: error: 1 of 3 host(s) failed: {targets[1].name}"
    for number in (1, 3):
        assert load_bundle(str(next((_workdir(fleet, number) / "bundles").iterdir())))
    assert not (_workdir(fleet, 2) / "bundles").exists()

    subprocess.run(["bash", str(TESTBOARD), "up", "native", "--name", fleet["name"], "--hosts", "3", "--python",
                    sys.executable], capture_output=True, text=True, check=True)  # host 2 back on its port
    assert deploy_main(["--target", str(fleet["profile"]), str(slim_fp32_bundle)]) == 0
    out = capsys.readouterr().out
    assert out.count(" 0 file(s) sent") == 2 and load_bundle(str(next((_workdir(fleet, 2) / "bundles").iterdir())))


def test_an_ansible_inventory_is_a_fleet(fleet, tmp_path, monkeypatch):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    fields = fleet["fields"]
    hosts = "\n".join(f"pi{i} ansible_host=127.0.0.1 ansible_port={h['port']}"
                      for i, h in enumerate(fields["hosts"], 1))
    inventory = tmp_path / "boards.ini"
    inventory.write_text(f"# my boards\n[pis]\n{hosts}\n\n[pis:vars]\nansible_user=root\n"
                         f"ansible_ssh_private_key_file={fields['key']}\nansible_python_interpreter={sys.executable}\n"
                         f"fdq_workdir=~/fdq\n")
    targets = load_targets(str(inventory))
    assert [(t.name, t.port, t.user) for t in targets] == [(f"pi{i}", h["port"], "root")
                                                          for i, h in enumerate(fields["hosts"], 1)]
    assert targets[0].engine == "qnnpack"  # the rpi4 profile gives what an inventory does not say
    results = on_each(targets, lambda conn: conn.run("echo $PPID", timeout=120).returncode)
    assert [r.value for r in results] == [0, 0, 0] and all(r.ok for r in results)


def test_a_fleet_profile_with_a_bad_entry_is_one_line(tmp_path, slim_fp32_bundle, capsys):
    profile = tmp_path / "fleet.yaml"
    profile.write_text("name: f\ntransport: ssh\npython: python3\nworkdir: ~/fdq\nuser: pi\n"
                       "hosts: [{host: 127.0.0.1, port: 2222, adress: x}]\n")
    assert deploy_main(["--target", str(profile), str(slim_fp32_bundle)]) == 1
    assert capsys.readouterr().err.strip() == (f"fdq-deploy: error: profile {profile}: hosts entry 1: unknown "
                                               "field(s) adress (an entry sets host, port, user, key, python, "
                                               "workdir, name)")


def test_fleet_profile_runs_on_every_host_and_a_stopped_one_fails_alone(fleet, slim_fp32_bundle, tmp_path,
                                                                       monkeypatch, capsys):
    from fdq.host.cli import profile_main

    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    targets = load_targets(str(fleet["profile"]))
    args = ["--target", str(fleet["profile"]), "--bundle", str(slim_fp32_bundle), "--frames", "2", "--warmup", "0"]
    assert profile_main([*args, "--runs", str(tmp_path / "all")]) == 0
    runs = sorted((tmp_path / "all").glob("[!.]*.json"))
    assert len(runs) == 3 and all(any(p.name.startswith(f"{t.name}-") for p in runs) for t in targets)
    capsys.readouterr()

    _stop_host(fleet, 3)
    assert profile_main([*args, "--runs", str(tmp_path / "two")]) == 1
    err = capsys.readouterr().err
    assert f"fdq-profile: error: {targets[2].name}: " in err and "connection refused" in err
    assert len(list((tmp_path / "two").glob("[!.]*.json"))) == 2
    subprocess.run(["bash", str(TESTBOARD), "up", "native", "--name", fleet["name"], "--hosts", "3", "--python",
                    sys.executable], capture_output=True, text=True, check=True)
