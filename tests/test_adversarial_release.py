"""Attacks on the signed release path, on a device tree (tests/device_tree.py): what a
release tree may hold beyond what was signed (planted bytecode, extra files and
directories, odd modes and owners, FIFOs and device nodes), key files as people write
them, leftovers of interrupted transfers, models that are truncated or rot on disk,
and a state file that cannot be written. After each: nothing unsigned runs, the
device keeps serving a good release, and the next deploy converges by itself."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from device_tree import Device


def _pyc_for(source: Path, code: str) -> bytes:
    """A .pyc of `code` whose header matches `source` (its mtime and size), as an
    attacker would plant it: timestamp-based, so an import trusts it."""
    st = source.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += int(st.st_mtime).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(
        4, "little")
    return header + marshal.dumps(compile(code, str(source), "exec"))


# --- 1. nothing runs that was not signed -------------------------------------------------

def test_planted_bytecode_is_removed_and_the_signed_source_runs(device: Device) -> None:
    rid = device.make("r1")
    app = device.releases / rid / "lib/edge_llm_gateway/app.py"
    cache = app.parent / "__pycache__"
    cache.mkdir()
    tag = sys.implementation.cache_tag
    (cache / f"app.{tag}.pyc").write_bytes(_pyc_for(app, "ANSWER = 'planted'"))
    r = device.run("install", rid)
    assert r.returncode == 0, r.stderr
    # what the gateway imports now is the signed source, byte-compiled on the device
    out = subprocess.run([sys.executable, "-c", "import edge_llm_gateway.app as a; "
                          "print(a.ANSWER)"], cwd=device.root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(app.parent.parent)})
    assert out.stdout.strip() == "42", out.stderr
    pyc = next(cache.glob("app.*.pyc"))
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b11  # hash-based and checked against the source at every import


@pytest.mark.parametrize("plant", [
    lambda d: (d / "lib/extra").mkdir(),
    lambda d: (d / "bin").chmod(0o777),
    lambda d: os.mkfifo(d / "bin/fifo"),
    lambda d: os.mknod(d / "bin/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    lambda d: os.chown(d / "engine.env", 1000, 1000),
    lambda d: os.symlink("/etc/shadow", d / "bin/shadow"),
    lambda d: (d / "bin/llama-server").chmod(0o4755),
], ids=["extra-directory", "writable-directory", "fifo", "device-node", "foreign-owner",
        "link-out", "setuid"])
def test_any_entry_the_signed_manifest_does_not_list_is_refused(device: Device,
                                                                plant) -> None:
    good = device.make("r1")
    assert device.run("install", good).returncode == 0
    rid = device.make("r2", model=b"weights two")
    plant(device.releases / rid)
    r = device.run("activate", rid, "--gate-timeout=5")
    assert r.returncode == 2 and "refused" in r.stderr, r.stderr
    assert device.current() == good and not device.calls.exists()


# --- 7. the health gate takes a key the way the gateway does ------------------------------

KEY = "sk-edge-" + "K" * 43


@pytest.mark.parametrize("text", [
    "\ufeff{key}\n",
    "{key}  # the laptop\n",
    "{key}\r\n",
    "# made at first boot\n\n   {key}   \n# another one:\nsk-edge-second\n",
    "\ufeff# keys\r\n\r\n\t{key}\t# the device\r\nsk-edge-second # spare\r\n",
], ids=["bom", "inline-comment", "crlf", "comments-and-blank-lines", "all-at-once"])
def test_the_gateway_the_gate_and_the_bench_take_the_same_key(device: Device, tmp_path: Path,
                                                              text: str) -> None:
    """One keys file, read by the real gateway (which serves with it), the real gate
    (edge-llm-release activate, which completes through that gateway with the first
    key) and the benchmark's device command: a file the gateway serves with must never
    fail the gate (and roll the release back) or the benchmark."""
    from fake_llama_server import FakeEngine
    from harness.gateway_process import GatewayProcess

    from builder.lab import measure

    device.keys.write_bytes(text.format(key=KEY).encode())
    device.api_auth = True
    engine = FakeEngine()
    try:
        with GatewayProcess(tmp_path / "gw", engine.url, "test-model",
                            keys_file=str(device.keys)) as gw:
            assert gw.get("/v1/models", key=KEY)[0] == 200
            assert gw.get("/v1/models", key=KEY + "x")[0] == 401
            device.port = gw.port  # the releases below are served by this gateway
            r1 = device.make("r1")
            assert device.run("install", r1).returncode == 0
            r2 = device.make("r2", model=b"weights two")
            r = device.run("activate", r2, "--gate-timeout=30")
            assert r.returncode == 0, r.stdout + r.stderr
            assert device.current() == r2
            facts = subprocess.run([sys.executable, "-c", measure.DEVICE_FACTS, "x.service",
                                    str(tmp_path / "none"), str(device.keys)],
                                   capture_output=True, text=True, check=True)
            assert measure.parse_facts(facts.stdout)["api_key"] == KEY
    finally:
        engine.close()


def test_the_gate_uses_the_key_file_the_roles_chose(device: Device) -> None:
    device.api_auth = True
    custom = device.root / "srv/keys"
    custom.parent.mkdir(parents=True)
    custom.write_text("sk-edge-custom\n")
    device.keys = custom  # the fake gateway reads the same file
    (device.root / "etc/edge-llm/device.json").write_text(json.dumps(
        {"api_keys": "/srv/keys"}))
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", model=b"weights two")
    assert device.run("activate", r2, "--gate-timeout=10").returncode == 0


# --- 8. a transfer cut short converges on the next deploy ---------------------------------

def test_a_stray_file_from_a_cut_transfer_does_not_block_the_release(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    b = device.bundle("r2", model=b"weights two")
    staged = device.deliver(b, incoming=True)
    (staged / "bin/.llama-server.Xy12ab").write_bytes(b"half a file")  # rsync's temp name
    r = device.run("activate", b.release_id, "--gate-timeout=10")
    assert r.returncode == 2  # the stray file is not signed: refused, nothing switched
    assert device.current() == r1
    device.deliver(b, incoming=True)  # the next deploy sends the tree again (--delete)
    r = device.run("activate", b.release_id, "--gate-timeout=10")
    assert r.returncode == 0, r.stderr
    assert device.current() == b.release_id
    assert not (device.releases / f".incoming-{b.release_id}").exists()


def test_a_release_refused_in_place_is_replaced_by_a_good_copy(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    b = device.bundle("r2", model=b"weights two")
    bad = device.deliver(b)
    (bad / "bin/leftover").write_bytes(b"x")  # an old in-place transfer
    assert device.run("activate", b.release_id, "--gate-timeout=5").returncode == 2
    device.deliver(b, incoming=True)
    r = device.run("activate", b.release_id, "--gate-timeout=10")
    assert r.returncode == 0, r.stderr
    assert not (device.releases / b.release_id / "bin/leftover").exists()


# --- 9. models: truncated, rotten -------------------------------------------------------

def test_a_truncated_model_is_found_and_removed_so_it_is_sent_again(device: Device) -> None:
    device.make("r1", model=b"x" * 100_000)
    model = next(device.models.glob("*.gguf"))
    sha = model.name.removesuffix(".gguf")
    assert device.run("model-check", model.name, f"--sha256={sha}",
                      "--bytes=100000").returncode == 0
    with model.open("r+b") as f:
        f.truncate(50_000)
    r = device.run("model-check", model.name, f"--sha256={sha}", "--bytes=100000")
    assert r.returncode == 2 and json.loads(r.stdout)["present"] is False
    assert not model.exists()  # gone: the role sends it again


def test_bytes_that_rot_under_a_valid_stamp_are_found_by_the_scrub(device: Device) -> None:
    rid = device.make("r1", model=b"y" * 100_000)
    assert device.run("install", rid).returncode == 0  # hashed once, stamped
    model = next(device.models.glob("*.gguf"))
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[777] ^= 0xFF
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    # silent corruption below the filesystem: make the stamp agree with the new bytes
    stamp = model.with_name(model.name + ".verified")
    st2 = model.stat()
    fields = stamp.read_text().split()
    fields[1:] = [str(v) for v in (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns,
                                   st2.st_ino, st2.st_dev)][: len(fields) - 1]
    stamp.write_text(" ".join(fields))
    r = device.run("scrub")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["corrupt"] == [model.name]
    assert device.run("verify", rid).returncode == 2  # and nothing uses it any more


def test_a_model_rewritten_in_place_is_hashed_again(device: Device) -> None:
    rid = device.make("r1", model=b"z" * 100_000)
    assert device.run("verify", rid).returncode == 0
    model = next(device.models.glob("*.gguf"))
    st = model.stat()
    with model.open("r+b") as f:  # same size, other bytes, mtime put back
        f.write(b"Q")
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = device.run("verify", rid)
    assert r.returncode == 2 and "sha256 differs" in r.stderr


# --- low: arguments, the manifest read once, state on a full disk ---------------------------

@pytest.mark.parametrize("to", ["../../etc", "/tmp/x", ".incoming-r1", ""])
def test_rollback_to_must_name_a_release(device: Device, to: str) -> None:
    r = device.run("rollback", f"--to={to}")
    assert r.returncode == 2 and "not a release id" in r.stderr


def test_the_manifest_is_read_once_and_what_was_verified_is_what_is_used(
        device: Device, tmp_path: Path) -> None:
    """release.json swapped between its signature check and its use (a planted file
    listed by the swapped copy) must not let the planted file through."""
    rid = device.make("r1")
    rdir = device.releases / rid
    (rdir / "bin/evil").write_bytes(b"unsigned code")
    evil = json.loads((rdir / "release.json").read_text())
    evil["files"]["bin/evil"] = {"sha256": hashlib.sha256(b"unsigned code").hexdigest(),
                                 "mode": f"{stat.S_IMODE((rdir / 'bin/evil').stat().st_mode):04o}"}
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(evil))
    real = shutil.which("ssh-keygen")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh-keygen").write_text(  # checks the signature, then swaps the file
        f"#!/bin/sh\n{real} \"$@\"; rc=$?\ncp {swapped} {rdir / 'release.json'}\nexit $rc\n")
    (fake / "ssh-keygen").chmod(0o755)
    r = device.run("install", rid, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 2 and "bin/evil" in r.stderr, r.stdout + r.stderr
    assert device.current() is None


def test_a_full_disk_while_saving_state_refuses_the_switch_cleanly(device: Device) -> None:
    # models elsewhere: only the state directory is the tiny, full disk
    (device.root / "etc/edge-llm/device.json").write_text(json.dumps(
        {"model_dir": "/var/lib/models"}))
    device.models = device.root / "var/lib/models"
    r1 = device.make("r1")
    assert device.run("install", r1).returncode == 0
    r2 = device.make("r2", model=b"weights two")
    state_dir = device.root / "var/lib/edge-llm"
    before = (state_dir / "release-state.json").read_bytes()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(state_dir)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {r.stderr.strip()}")
    try:
        (state_dir / "release-state.json").write_bytes(before)
        # fill it to the last byte (unbuffered: nothing left to flush at close)
        with open(state_dir / "filler", "wb", buffering=0) as f, \
                contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
        r = device.run("activate", r2, "--gate-timeout=5")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert "No space left" in r.stderr
        assert (state_dir / "release-state.json").read_bytes() == before
        assert device.current() == r1 and not device.calls.exists()
    finally:
        subprocess.run(["umount", str(state_dir)], check=False)
