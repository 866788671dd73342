"""A rebuild redoes only what changed: a runtime-only change (context length, threads)
takes the provisioned rootfs from the cache, runs no Ansible, and gives an image whose
root filesystem differs from the first build's only in the release laid into it."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest


def root_files(image: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Every path of the image's root filesystem (its last partition) with its mode,
    owner, link target or sha256: read with debugfs, no loop device, no mount."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True,
                                      text=True, check=True).stdout)
    root = table["partitiontable"]["partitions"][-1]
    work.mkdir(parents=True)
    img, tree = work / "root.img", work / "tree"
    subprocess.run(["dd", f"if={image}", f"of={img}", "bs=4M", f"skip={root['start'] * 512}",
                    f"count={root['size'] * 512}", "iflag=skip_bytes,count_bytes",
                    "conv=sparse", "status=none"], check=True)
    tree.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {tree}", str(img)], check=True,
                   capture_output=True)
    img.unlink()
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            what: dict[str, Any] = {"mode": stat.S_IMODE(st.st_mode),
                                    "owner": (st.st_uid, st.st_gid)}
            if stat.S_ISLNK(st.st_mode):
                what["link"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(tree))] = what
    return out


@pytest.mark.slow
def test_a_runtime_only_change_lays_a_new_release_without_ansible(
        appliance: Path, tiny_q4: Path, run_builder_session, tmp_path: Path) -> None:
    first = json.loads((appliance / "x86-gateway/manifest.json").read_text())
    profiles, out = tmp_path / "profiles", tmp_path / "out"
    profiles.mkdir()
    (profiles / "x86-gateway.yaml").write_text(  # the built-in profile, two knobs changed
        "extends: x86-gateway\nruntime:\n  context_length: 2048\n  threads: 1\n")
    r = run_builder_session("build", "--profile", "x86-gateway", "--model-file", str(tiny_q4),
                            "--out", str(out), "--profiles-dir", str(profiles))
    assert r.returncode == 0, r.stderr[-3000:]
    second = json.loads((out / "x86-gateway/manifest.json").read_text())

    key = first["inputs"]["provisioned_key"]
    assert second["inputs"]["provisioned_key"] == key
    assert f"provisioned rootfs: reused (cache {key[:12]}); Ansible: skipped, nothing that " \
           "reaches the tree changed" in r.stderr
    assert "applying roles to the rootfs" not in r.stderr
    old_id, new_id = first["release_id"], second["release_id"]
    assert new_id != old_id

    before = root_files(appliance / "x86-gateway/image.raw", tmp_path / "before")
    after = root_files(out / "x86-gateway/image.raw", tmp_path / "after")
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    releases = "opt/edge-llm/releases/"
    model = Path(first["model"]["device_path"]).relative_to("/")
    outside = {p for p in changed
               if not p.startswith((f"{releases}{old_id}", f"{releases}{new_id}"))}
    # the release switched to, its state, and the device's stamp of the model it hashed
    assert "opt/edge-llm/current" in outside
    assert outside <= {"opt/edge-llm/current", "var/lib/edge-llm/release-state.json",
                       f"{model}.verified"}, sorted(outside)
    assert after["opt/edge-llm/current"]["link"] == f"releases/{new_id}"
    assert f"{releases}{old_id}" not in after and f"{releases}{new_id}/release.json" in after
    def env(which: str, rid: str) -> dict[str, str]:
        text = (tmp_path / which / "tree" / releases / rid / "engine.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    old_env, new_env = env("before", old_id), env("after", new_id)
    assert new_env["LLAMA_ARG_THREADS"] == '"1"'  # the knobs reached the engine
    assert new_env["LLAMA_ARG_CTX_SIZE"] != old_env["LLAMA_ARG_CTX_SIZE"]
