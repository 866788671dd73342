"""The controller treats a release, a bundle and an inventory as hostile until checked
(docs/security.md, "What the controller checks"). Each test attacks one promise the
way a hostile carrier or a compromised build would:

- a bundle cannot choose the keys it is checked against (its manifest's `profile`
  once pointed the import at a manifest the attacker shipped);
- no value of a release, signed or not, reaches Ansible's templating: a Jinja payload in
  any field is refused before ansible-playbook starts, and the extra vars the builder
  writes are marked unsafe, so even a value that got through would stay text;
- a bundle import writes nothing outside OUT/releases, whatever its links and modes
  say, and a release already placed under the same id is verified, not trusted;
- inventory host names that would name files outside the report directory are refused.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import releases
from device_tree import keygen

from builder.fleet import trust
from builder.provision import unsafe_yaml

PAYLOAD = "{{ lookup('pipe', 'touch %s') }}"


@pytest.fixture
def site(tmp_path: Path):
    """A release made at a site whose OUT trusts the key it was signed with:
    (release, OUT, the trusted key, a marker path a payload would create)."""
    key = keygen(tmp_path / "site-key")
    out = tmp_path / "out"
    b = releases.make(tmp_path / "build", key, out=out)
    releases.trust_key(out, key)
    return b, out, key, tmp_path / "MARKER"


def _visible(out: Path) -> list[str]:
    d = out / "releases"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) \
        if d.is_dir() else []


def _one_line_refusal(r, *words: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: "), r.err
    assert "Traceback" not in r.err + r.out
    for w in words:
        assert w in r.err, r.err


# --- 1. one trust root per site ------------------------------------------------------------

@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_bundle_cannot_choose_the_keys_it_is_checked_against(site, tmp_path: Path, cli,
                                                               where: str) -> None:
    b, out, _key, _ = site
    evil_key = keygen(tmp_path / "evil-key")
    evil = releases.make(tmp_path / "evil-build", evil_key)
    # the attacker ships a build manifest that trusts its own key, and names it
    evil_line = releases.signers_file(tmp_path / "evil-signers", evil_key).read_text().strip()
    planted = {"absolute": tmp_path / "stick" / "evil", "dotdot": out.parent.parent}[where]
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "manifest.json").write_text(json.dumps(
        {"provision_vars": {"release_allowed_signers": [evil_line]}}))
    m = copy.deepcopy(evil.manifest)
    m["profile"] = str(planted) if where == "absolute" else "../.."
    file = releases.craft_bundle(tmp_path / "evil.bundle", evil, m, evil_key)
    before = releases.listing_of(out)

    for args in (["bundle", "import", str(file)],
                 ["deploy", "--inventory", str(tmp_path / "fleet.ini"), "--bundle", str(file)]):
        (tmp_path / "fleet.ini").write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
        r = cli(*args, "--out", str(out))
        _one_line_refusal(r, "the signature of release.json does not verify",
                          "the site's")
        assert releases.listing_of(out) == before
        assert _visible(out) == [b.release_id]

    # and a site with no keys of its own refuses rather than trusting the bundle's word
    bare = tmp_path / "bare-site"
    r = cli("bundle", "import", str(file), "--out", str(bare))
    _one_line_refusal(r, "no keys to check the release's signature with")
    assert _visible(bare) == []


def test_a_release_made_here_adds_its_key_to_the_sites_trust(tmp_path: Path) -> None:
    from builder.fleet import trust

    out = tmp_path / "out"
    line = 'edge-llm-release namespaces="edge-llm-release" ssh-ed25519 AAAA'
    trust.record_signer(out, line)
    trust.record_signer(out, line)  # once only
    trust.record_signer(out, line + "B")
    assert (out / "allowed_signers").read_text().splitlines() == [line, line + "B"]


def test_deploy_of_a_release_directory_checks_its_signature(site, tmp_path: Path,
                                                            cli) -> None:
    """`deploy --release DIR` once sent whatever DIR held: now a release signed by a key
    the site does not trust is refused before Ansible starts."""
    _, out, _, marker = site
    evil_key = keygen(tmp_path / "evil-key")
    evil = releases.make(tmp_path / "evil-build", evil_key)
    m = copy.deepcopy(evil.manifest)
    m["engine"]["watchdog_seconds"] = PAYLOAD % marker
    releases.resign(evil.tree, m, evil_key)
    (tmp_path / "fleet.ini").write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
    for args in (["deploy", "--inventory", str(tmp_path / "fleet.ini")], ["fleet", "vars"]):
        r = cli(*args, "--release", str(evil.dir), "--out", str(out))
        _one_line_refusal(r, "does not verify with the site's")
        assert r.out == ""
    assert not marker.exists()


# --- 2. nothing of a release reaches Jinja ----------------------------------------------------

def _leaves(d: Any, path: tuple = ()) -> list[tuple]:
    """Every value of a JSON document (and every key of its file listings), as a path."""
    if isinstance(d, dict):
        found = []
        for k, v in d.items():
            found += _leaves(v, (*path, k))
            if path in (("files",), ("dirs",), ("links",)):
                found.append((*path, ("key", k)))
        return found
    return [path]


def _with(m: dict[str, Any], path: tuple, value: str) -> dict[str, Any]:
    m = copy.deepcopy(m)
    node = m
    for k in path[:-1]:
        node = node[k]
    last = path[-1]
    if isinstance(last, tuple):  # a key of a listing: rename the entry
        node[value] = node.pop(last[1])
    else:
        node[last] = value
    return m


def _field_cases() -> list[tuple]:
    key = keygen_once()
    b = releases.make(key.parent / "build", key)
    return _leaves(b.manifest)


_KEYDIR: list[Path] = []


def keygen_once() -> Path:
    """One key for collecting the fields (parametrize runs before fixtures)."""
    if not _KEYDIR:
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="edge-llm-trust-"))
        _KEYDIR.append(keygen(d / "k"))
    return _KEYDIR[0]


FIELDS = _field_cases()


def _id(path: tuple) -> str:
    return ".".join(k[1] + "(name)" if isinstance(k, tuple) else str(k) for k in path)


@pytest.mark.parametrize("field", FIELDS, ids=[_id(f) for f in FIELDS])
def test_a_template_in_any_field_of_a_signed_release_never_runs(site, tmp_path: Path, cli,
                                                               field: tuple) -> None:
    """Signed by the site's own key (a compromised build, an insider): the payload
    still runs nowhere, through `fleet vars`, `deploy --release` or `deploy --bundle`."""
    b, out, key, marker = site
    payload = PAYLOAD % marker
    m = _with(b.manifest, field, payload)
    evil = tmp_path / "evil"
    shutil.copytree(b.dir, evil, symlinks=True)
    releases.resign(evil / "tree", m, key)
    contents = {payload: b"x"} if isinstance(field[-1], tuple) else None
    file = releases.craft_bundle(tmp_path / "evil.bundle", b, m, key, contents=contents)
    (tmp_path / "fleet.ini").write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
    inv = ["--inventory", str(tmp_path / "fleet.ini")]
    for args in (["fleet", "vars", "--release", str(evil)],
                 ["deploy", *inv, "--release", str(evil)],
                 ["deploy", *inv, "--bundle", str(file)]):
        r = cli(*args, "--out", str(out))
        _one_line_refusal(r, "refused")
        assert r.out == "" and not marker.exists()
    assert _visible(out) == [b.release_id]


def test_a_bundle_json_model_path_with_a_template_is_refused(site, cli) -> None:
    """bundle.json is written by the controller and never signed: its model path is
    checked like any other value before it reaches a playbook."""
    b, out, _, marker = site
    (b.dir / "bundle.json").write_text(json.dumps({"model_path": f"/{PAYLOAD % marker}"}))
    r = cli("fleet", "vars", "--release", str(b.dir), "--out", str(out))
    _one_line_refusal(r, "names no usable model path")
    assert not marker.exists()


def test_the_vars_the_builder_hands_ansible_are_never_templated(tmp_path: Path) -> None:
    """The second wall: every string in the extra-vars file the builder writes is marked
    !unsafe, so ansible-core keeps it as text even where a task templates it (run here
    with the real ansible-playbook on localhost)."""
    marker = tmp_path / "MARKER"
    payload = PAYLOAD % marker
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(unsafe_yaml({"release_id": payload, "nested": {"a": [payload]},
                                      "n": 3, "empty": ""}))
    out = tmp_path / "seen.txt"
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.assert:
        that: [release_id | length > 0, n | int == 3, empty | length == 0]
    - ansible.builtin.copy:
        content: "{{{{ release_id }}}} {{{{ nested.a[0] }}}}"
        dest: {out}
""")
    exe = Path(sys.executable).with_name("ansible-playbook")
    py = ["-e", f"ansible_python_interpreter={sys.executable}"]
    r = subprocess.run([exe, "-i", "localhost,", "-c", "local", *py, "-e", f"@{vars_file}",
                        str(play)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not marker.exists()
    assert out.read_text() == f"{payload} {payload}"
    # without the marking, the same file runs the payload: the wall is real
    plain = tmp_path / "plain.yml"
    plain.write_text(json.dumps({"release_id": payload, "nested": {"a": ["x"]}, "n": 3,
                                 "empty": ""}))
    subprocess.run([exe, "-i", "localhost,", "-c", "local", *py, "-e", f"@{plain}", str(play)],
                   capture_output=True, text=True, timeout=300)
    assert marker.exists()


# --- 3. a bundle import writes only inside OUT ----------------------------------------------

def _outside(tmp_path: Path) -> Path:
    """A directory outside OUT holding a secret (0600), which no import may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("root's\n")
    (d / "secret").chmod(0o600)
    return d


def _link_out_abs(m, outside, b):
    m["links"]["bin/out"] = str(outside)
    m["files"]["bin/out/pwn"] = {"sha256": m["files"]["engine.env"]["sha256"], "mode": "0755"}


def _link_up(m, outside, b):
    m["links"]["up"] = "../../../../outside"
    m["files"]["up/pwn"] = {"sha256": m["files"]["engine.env"]["sha256"], "mode": "0644"}


def _setuid(m, outside, b):
    m["files"]["bin/llama-server"]["mode"] = "4755"


def _world_writable(m, outside, b):
    m["files"]["engine.env"]["mode"] = "0666"


def _chmod_through_a_link(m, outside, b):
    """An existing 0600 file outside became 0666 this way: a link to its directory, then
    a 'file' at the same name beneath it."""
    m["links"]["d"] = str(outside)
    m["files"]["d/secret"] = {"sha256": m["files"]["engine.env"]["sha256"], "mode": "0666"}


def _sha_path(m, outside, b):
    m["files"]["engine.env"]["sha256"] = "../../../../outside/secret"


def _model_file_up(m, outside, b):
    m["model"]["files"] = {"../../outside/pwn": "0" * 64}


@pytest.mark.parametrize("attack", [_link_out_abs, _link_up, _setuid, _world_writable,
                                    _chmod_through_a_link, _sha_path, _model_file_up])
def test_a_bundle_import_writes_nothing_outside_out(site, tmp_path: Path, cli,
                                                    attack) -> None:
    b, out, key, _ = site
    outside = _outside(tmp_path)
    m = copy.deepcopy(b.manifest)
    attack(m, outside, b)
    contents = {rel: (b.tree / "engine.env").read_bytes() for rel in m["files"]
                if not (b.tree / rel).is_file()}
    file = releases.craft_bundle(tmp_path / "evil.bundle", b, m, key, contents=contents)
    before = releases.listing_of(tmp_path)
    r = cli("bundle", "import", str(file), "--out", str(out))
    _one_line_refusal(r, "refused")
    after = releases.listing_of(tmp_path)
    assert {k: v for k, v in after.items() if "/out/releases/." not in k} == \
        {k: v for k, v in before.items() if "/out/releases/." not in k}
    assert (outside / "secret").stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_a_member_that_is_not_what_the_manifest_says_is_refused(site, tmp_path: Path, cli,
                                                                kind: bytes) -> None:
    """A hard link to a file outside, a FIFO or a device node where the signed manifest
    has a regular file."""
    b, out, key, _ = site
    outside = _outside(tmp_path)
    m = copy.deepcopy(b.manifest)
    m["files"]["zz-extra"] = {"sha256": m["files"]["engine.env"]["sha256"], "mode": "0644"}
    ti = tarfile.TarInfo("tree/zz-extra")
    ti.type, ti.linkname = kind, str(outside / "secret")
    ti.devmajor, ti.devminor = 1, 3
    # the manifest lists zz-extra; the tar holds something else there, listed first
    file = releases.craft_bundle(tmp_path / "evil.bundle", b, m, key, omit={"zz-extra"},
                                 members=[ti])
    before = releases.listing_of(tmp_path)
    r = cli("bundle", "import", str(file), "--out", str(out))
    _one_line_refusal(r, "refused")
    assert {k: v for k, v in releases.listing_of(tmp_path).items()
            if "/out/releases/." not in k} == \
        {k: v for k, v in before.items() if "/out/releases/." not in k}


def test_a_release_already_placed_under_the_id_is_verified_not_trusted(site, tmp_path: Path,
                                                                      cli) -> None:
    """Something else sitting in OUT/releases/<id> (an older import with other keys, a
    hand edit) is not taken for the release: the import checks it and replaces it."""
    b, out, key, _ = site
    file = releases.craft_bundle(tmp_path / "good.bundle", b, b.manifest, key)
    signed = trust.listing(b.tree)
    placed = out / "releases" / b.release_id
    assert placed == b.dir
    (placed / "tree" / "engine.env").write_text("LLAMA_ARG_HOST=\"0.0.0.0\"\n")
    r = cli("bundle", "import", str(file), "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert not json.loads(r.out)["already"]
    assert trust.listing(placed / "tree") == signed
    # and once it is the signed one, a second import leaves it alone
    r = cli("bundle", "import", str(file), "--out", str(out), "--json")
    assert r.code == 0 and json.loads(r.out)["already"], r.err


# --- inventories ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "-oProxyCommand=touch"])
def test_an_inventory_host_name_that_is_not_a_name_is_refused(workdir: Path, run_builder,
                                                              name: str) -> None:
    """Host names name each host's report on the controller (<dir>/<host>.json)."""
    (workdir / "fleet.yml").write_text(json.dumps(
        {"fleet": {"hosts": {name: {"ansible_host": "192.0.2.1"}}}}))
    r = run_builder("fleet", "status", "--inventory", "fleet.yml", cwd=workdir)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"host {name!r}: not a host name" in r.stderr


@pytest.mark.parametrize(("var", "value"), [
    ("ansible_user", "-oProxyCommand=touch MARKER"),
    ("ansible_host", "-oProxyCommand=touch MARKER"),
    ("ansible_user", "edge\nHost *"),
    ("ansible_port", "22 -oProxyCommand=x"),
])
def test_verify_takes_no_ssh_option_from_an_inventory(tmp_path: Path, var: str,
                                                      value: str) -> None:
    """`builder verify --inventory` reads any Ansible inventory: its user, host and port
    become an ssh command line, so each must be what it says it is."""
    from builder.errors import BuilderError
    from builder.verify import inventory_targets

    inv = tmp_path / "fleet.yml"
    inv.write_text(json.dumps(
        {"fleet": {"hosts": {"kiosk1": {"ansible_host": "192.0.2.1", var: value}}}}))
    with pytest.raises(BuilderError, match=r"fleet.yml: host kiosk1: "):
        inventory_targets(inv)
    inv.write_text(json.dumps({"fleet": {"hosts": {"kiosk1": {
        "ansible_host": "192.0.2.1", "ansible_user": "edge", "ansible_port": 2222}}}}))
    [t] = inventory_targets(inv)
    assert (t.user, t.host, t.port) == ("edge", "192.0.2.1", 2222)


def test_verify_takes_no_ssh_option_from_the_host_url() -> None:
    from builder.errors import BuilderError
    from builder.verify import parse_host

    with pytest.raises(BuilderError, match="is not a user name"):
        parse_host("ssh://-oProxyCommand=touch%20MARKER@192.0.2.1")
    assert parse_host("ssh://edge@[::1]:2222").host == "::1"


# --- 6. verifying a device against a release it was deployed --------------------------------

def _built(target: str = "x86-gateway") -> dict[str, Any]:
    """A build's manifest, as much of it as `as_deployed` keeps or replaces."""
    return {"profile": "x86-gateway", "target": target, "release_id": "rbuilt",
            "engine": {"kind": "llama.cpp", "start_seconds": 600},
            "release": {"id": "rbuilt", "model_id": "built-model"},
            "model": {"sha256": "0" * 64, "device_path": "/var/lib/edge-llm/models/x.gguf"},
            "plan": {"total": 1}, "layout": {"engine_unit": "edge-llm-engine.service"},
            "inputs": {"profile": {"service": {"api_auth": True}}, "rootfs_key": "k"},
            "provision_vars": {"release_id": "rbuilt"}}


def test_verify_expects_what_the_deployed_release_brings(site) -> None:
    """`builder verify --release`: the release's id, model, engine probe, profile and
    plan (recorded when it was made) over the build's system; never the build's Ansible
    run, which would put the build's release back."""
    from builder import verify

    b, out, _, _ = site
    rel = trust.open_release(b.dir, trust.signers(None, out))
    m = verify.as_deployed(_built(), rel)
    recorded = json.loads((b.dir / "bundle.json").read_text())
    assert m["release_id"] == m["release"]["id"] == rel.release_id
    assert m["model"]["sha256"] == b.manifest["model"]["sha256"]
    assert m["model"]["device_path"] == b.manifest["model"]["path"]
    assert m["release"]["model_id"] == "test-model"
    assert m["plan"] == recorded["plan"] and m["inputs"]["profile"] == recorded["profile"]
    assert m["inputs"]["rootfs_key"] == "k" and m["layout"] == _built()["layout"]
    assert m["provision_vars"] is None


def test_verify_refuses_a_release_it_cannot_hold_a_device_to(site) -> None:
    from builder import verify
    from builder.errors import BuilderError

    b, out, _, _ = site
    rel = trust.open_release(b.dir, trust.signers(None, out))
    with pytest.raises(BuilderError, match="is for x86-gateway; the x86-gateway build is a "
                       "raspberry-pi5"):
        verify.as_deployed(_built("raspberry-pi5"), rel)
    record = json.loads((b.dir / "bundle.json").read_text())
    for broken in ({k: v for k, v in record.items() if k != "plan"},  # imported, or older
                   {**record, "plan": {**record["plan"], "total": "{{ 1 }}"}}):
        (b.dir / "bundle.json").write_text(json.dumps(broken))
        with pytest.raises(BuilderError, match="does not say what it was planned for"):
            verify.as_deployed(_built(), rel)
