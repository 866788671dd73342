"""The main job end to end: build the x86-gateway image, boot it in QEMU, verify it
with the shipped testinfra suite. Uses the tiny Qwen2 model (via --model-file) because
inference under TCG emulation decodes at well under a token a second for real models.
One build and one booted VM are shared by the tests here."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from builder.cache import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")  # stopped before the fleet tests boot theirs
def booted(appliance: Path, start_vm):
    from builder import vm

    spec, key = start_vm(appliance, "first", disk_size=8 << 30)  # a medium bigger than the image
    yield spec, key
    assert vm.stop(spec.state_dir)


def ssh(booted, command: str) -> str:
    from builder.vm import ssh_command

    spec, key = booted
    r = subprocess.run(ssh_command(spec.ssh_port, "edge", key, command), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_manifest_records_what_went_into_the_image(appliance: Path, manifest: dict,
                                                   tiny_q4: Path) -> None:
    d = manifest["delivery"]
    assert d["kind"] == "disk-image" and d["layout"] == "uefi-gpt"
    files = {role: appliance / "x86-gateway" / name for role, name in d["files"].items()}
    assert d["sha256"] == sha256_file(files["image"])
    assert files["bmap"].is_file() and files["compressed"].is_file()
    assert manifest["model"]["sha256"] == sha256_file(tiny_q4)
    assert manifest["engine"]["files"]["bin/llama-server"]
    assert {"linux-image-amd64", "openssh-server", "systemd", "libgomp1"} <= set(
        manifest["packages"])
    assert all(manifest["packages"].values())  # every package with its version
    assert manifest["release_id"].startswith("r")
    assert manifest["inputs"]["profile"]["target"] == "x86-gateway"


# The suite's Ansible idempotence check re-runs the whole appliance playbook over SSH:
# about 90 tasks, seconds each in a TCG guest (13 minutes here), so it is a test of its own
# in the long tier.
IDEMPOTENCE = "a_second_ansible_run"


def _verify(booted, appliance: Path, run_builder_session, select: str):
    spec, _ = booted
    api_port = next(iter(spec.forwards))
    r = run_builder_session("verify", "--profile", "x86-gateway", "--out", str(appliance),
                            "--host", f"ssh://edge@127.0.0.1:{spec.ssh_port}",
                            "--api-url", f"http://127.0.0.1:{api_port}", "--select", select)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    return (appliance / "x86-gateway" / f"verify-127.0.0.1-{spec.ssh_port}.xml").read_text()


def test_builder_verify_passes_against_the_booted_image(booted, appliance: Path,
                                                        run_builder_session) -> None:
    report = _verify(booted, appliance, run_builder_session, f"not {IDEMPOTENCE}")
    assert 'name="decode_tps"' in report and 'name="ttft_ms"' in report
    assert IDEMPOTENCE not in report and 'failures="0"' in report and 'skipped="0"' in report


@pytest.mark.long
def test_a_second_ansible_run_on_the_device_changes_nothing(booted, appliance: Path,
                                                            run_builder_session) -> None:
    report = _verify(booted, appliance, run_builder_session, IDEMPOTENCE)
    assert 'tests="1"' in report and IDEMPOTENCE in report and 'failures="0"' in report


def _held_to_an_impossible_decode_rate(tmp_path: Path) -> Path:
    """A profiles dir whose x86-gateway is the built-in one with a decode bar no device
    meets (the other bars as built)."""
    mine = tmp_path / "profiles"
    mine.mkdir()
    (mine / "x86-gateway.yaml").write_text(
        "extends: x86-gateway\nverify:\n  min_decode_tps: 1000000\n")
    return mine


def test_builder_verify_fails_a_device_slower_than_the_profile_asks(
        booted, appliance: Path, run_builder_session, tmp_path: Path) -> None:
    spec, _ = booted
    api_port = next(iter(spec.forwards))
    mine = _held_to_an_impossible_decode_rate(tmp_path)
    junit = tmp_path / "strict.xml"
    r = run_builder_session("verify", "--profile", "x86-gateway", "--profiles-dir", str(mine),
                            "--out", str(appliance), "--select", "performance",
                            "--host", f"ssh://edge@127.0.0.1:{spec.ssh_port}",
                            "--api-url", f"http://127.0.0.1:{api_port}", "--junit", str(junit))
    assert r.returncode == 2 and "verification failed on" in r.stderr
    report = junit.read_text()
    assert "under the profile&apos;s verify.min_decode_tps 1000000" in report or \
        "under the profile's verify.min_decode_tps 1000000" in report
    assert report.count("<failure") == 1  # the decode check; time to first token passed
    report = next((appliance / "x86-gateway").glob("verify-*.xml")).read_text()
    assert 'failures="0"' in report and 'errors="0"' in report


def test_builder_bench_measures_the_device_and_holds_it_to_the_bars(
        booted, appliance: Path, run_builder_session, tmp_path: Path) -> None:
    spec, _ = booted
    api_port = next(iter(spec.forwards))
    mine = _held_to_an_impossible_decode_rate(tmp_path)
    record = tmp_path / "bench.json"
    r = run_builder_session("bench", "--profile", "x86-gateway", "--profiles-dir", str(mine),
                            "--out", str(appliance), "--requests", "2", "--max-tokens", "8",
                            "--prefill-words", "200", "--record", str(record),
                            "--host", f"ssh://edge@127.0.0.1:{spec.ssh_port}",
                            "--api-url", f"http://127.0.0.1:{api_port}", "--json")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert json.loads(record.read_text()) == doc
    b = doc["benchmark"]
    assert b["requests"] == 2 and 0 < b["decode_tps"] < 1000000
    assert 0 < b["ttft_ms_p50"] <= b["ttft_ms_p95"]
    assert b["prefill_prompt_tokens"] > 150 and b["prefill_tps"] > 0
    planned = doc["checks"][2]["bar"]  # max_rss auto: the plan's engine share
    assert 1 << 20 < b["peak_rss_bytes"] <= planned
    assert [(c["name"], c["ok"]) for c in doc["checks"]] == [
        ("decode_tps", False), ("ttft_ms_p50", True), ("peak_rss_bytes", True)]


def test_the_root_grew_to_fill_the_medium_at_first_boot(booted, manifest: dict) -> None:
    size = int(ssh(booted, "findmnt -bno SIZE /").strip())
    assert size > manifest["delivery"]["bytes"] + (4 << 30)  # the image is far smaller than 8G
    assert "edge-llm-grow-root" in ssh(booted, "systemctl list-units --state=exited "
                                              "--no-legend edge-llm-grow-root.service")


def test_overlays_profile_wins_over_common(booted) -> None:
    assert ssh(booted, "cat /etc/hostname").strip() == "edge-gateway"  # x86-gateway/
    assert "DHCP=yes" in ssh(booted, "cat /etc/systemd/network/20-wired.network")  # common/


def test_a_disk_too_small_for_the_rootfs_fails_and_leaves_nothing(
        tmp_path: Path, tiny_q4: Path, run_builder_session) -> None:
    (tmp_path / "small.yaml").write_text(
        "extends: x86-gateway\ndevice:\n  storage:\n    size: 512MiB\n")
    out = tmp_path / "out"
    r = run_builder_session("build", "--profile", str(tmp_path / "small.yaml"),
                            "--model-file", str(tiny_q4), "--out", str(out))
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert errors[0].startswith("error: disk too small for the rootfs: needs ")
    assert "device.storage.size" in errors[0]
    # no out/small and no leftovers of the build; its log and the (complete, reusable)
    # release it made before the disk step stay
    # the release was made (and its key trusted by the site) before the image failed
    assert sorted(p.name for p in out.iterdir()) == [".logs", "allowed_signers", "releases"]
    assert not list((out / "releases").glob(".tmp-*"))


def test_engine_killed_mid_stream_gateway_errors_cleanly_and_systemd_brings_it_back(
        booted) -> None:
    """It kills the engine of the shared VM (systemd brings it back)."""
    import http.client
    import time

    spec, _ = booted
    api_port = next(iter(spec.forwards))
    key = ssh(booted, "sudo cat /etc/edge-llm/api-keys").split()[0]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(body: dict) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=300)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), auth)
        r = conn.getresponse()
        return r.status, r.read()

    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "messages": [{"role": "user", "content": "Count."}], "max_tokens": 1000,
        "ignore_eos": True, "stream": True}), auth)
    stream = conn.getresponse()
    assert stream.status == 200
    assert stream.readline().startswith(b"data:")
    ssh(booted, "sudo systemctl kill --signal=KILL edge-llm-engine.service")
    rest = stream.read().decode()
    assert '"code": "engine_unavailable"' in rest and "[DONE]" not in rest
    # systemd restarts the engine (Restart=on-failure); the gateway answers 503 meanwhile
    deadline = time.monotonic() + 300
    status = 0
    while time.monotonic() < deadline:
        status, body = post({"messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 2})
        if status == 200:
            break
        assert status == 503 and json.loads(body)["error"]["code"] == "engine_unavailable"
        time.sleep(2)
    assert status == 200
    assert ssh(booted, "systemctl show -p NRestarts --value edge-llm-engine.service"
               ).strip() == "1"


def _gpt_ids(table: dict) -> tuple[str, ...]:
    pt = table["partitiontable"]
    return (pt["id"].lower(), *(p["uuid"].lower() for p in pt["partitions"]))


def test_the_medium_gets_its_own_ids_at_first_boot_and_boots_by_them(
        booted, appliance: Path, manifest: dict) -> None:
    """Last in this file (it reboots the shared VM): after the first boot the disk and
    partition GUIDs differ from the image's (edge-llm-disk-ids) and the loader entry names
    the new root PARTUUID; the second boot comes up by it and changes nothing. The
    crash-safety of each step is tests/test_first_boot_ids.py's."""
    import time

    from builder import vm
    from builder.errors import BuilderError

    image = appliance / "x86-gateway" / manifest["delivery"]["files"]["image"]
    built = _gpt_ids(json.loads(subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True,
        timeout=60).stdout))
    assert manifest["delivery"]["root_partuuid"] == built[2]
    assert manifest["delivery"]["ids_change_at_first_boot"] is True
    spec, key = booted
    handle = vm.VmHandle(spec, vm.running(spec.state_dir) or 0, "", time.monotonic())

    def on_device() -> dict:
        out = vm.ssh(handle, "edge", key, (
            "systemctl is-system-running --wait >/dev/null || true; "  # the unit has run
            "set -e; "
            "sudo sfdisk --json /dev/vda; echo @@; cat /proc/cmdline; echo @@; "
            "sudo mount -o ro /dev/vda1 /mnt; cat /mnt/loader/entries/edge.conf; "
            "sudo umount /mnt; echo @@; cat /etc/fstab; echo @@; "
            "systemctl show -p ActiveState -p Result -p ConditionResult "
            "edge-llm-disk-ids.service; echo @@; cat /proc/sys/kernel/random/boot_id; "
            "echo @@; ls /var/lib/edge-llm"))
        table, cmdline, entry, fstab, unit, boot_id, state = out.split("@@\n")
        return {"ids": _gpt_ids(json.loads(table)), "cmdline": cmdline, "entry": entry,
                "fstab": fstab, "unit": unit, "boot_id": boot_id.strip(), "state": state}

    first = on_device()
    with contextlib.suppress(BuilderError):  # the connection drops as it goes down
        vm.ssh(handle, "edge", key, "sudo systemctl reboot", timeout=30)
    deadline = time.monotonic() + 900
    while True:
        try:
            second = on_device()
            if second["boot_id"] != first["boot_id"]:
                break
        except BuilderError:
            assert vm._is_qemu(handle.pid), "the VM stopped instead of rebooting"
        assert time.monotonic() < deadline, "the VM did not come back after a reboot"
        time.sleep(5)

    new = first["ids"]
    assert all(a != b for a, b in zip(new, built, strict=True)), (new, built)
    assert f"root=PARTUUID={built[2]} " in first["cmdline"]  # the image's, this one boot
    assert f"options root=PARTUUID={new[2]} rw " in first["entry"]
    assert not any(old in first["fstab"].lower() for old in built)
    assert "ActiveState=active" in first["unit"] and "Result=success" in first["unit"]
    assert "disk-ids.pending" not in first["state"]
    # the second boot: by the new id, and nothing changed again
    assert second["ids"] == new
    assert f"root=PARTUUID={new[2]} " in second["cmdline"]
    assert second["entry"] == first["entry"] and second["fstab"] == first["fstab"]
    assert "ConditionResult=no" in second["unit"]
