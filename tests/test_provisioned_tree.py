"""The provisioned rootfs as a cache entry: its key changes with everything that reaches
the tree and with nothing that reaches only the release; a rebuild takes it from the
cache without Ansible; the tarball keeps what a root-owned tree holds."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from stand_ins import build_context

from builder import build as build_mod
from builder import provision, resolve
from builder.cache import Cache, Entry, key_of
from builder.contracts import BuildContext
from builder.data import data_dir
from builder.fleet import release
from builder.profiles import ProfileStore
from builder.rootfs import Rootfs, pack, unpack
from builder.targets.x86_gateway import TARGET as X86


def _base(key: str = "base") -> Rootfs:
    return Rootfs(Entry(Path(f"/cache/rootfs/{key}"), {"kind": "rootfs", "key": key,
                                                        "outputs": {}, "packages": {}}))


def tree_key(ctx: BuildContext) -> str:
    given = build_mod.tree_vars(build_mod.role_vars(ctx, image_build=True))
    return key_of("provisioned", build_mod.tree_inputs(ctx, given))


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The roles and overlays, copied where a test may change them; the release role's
    link to the device tools (../../../builder/device) points at a copy of them too."""
    shutil.copytree(data_dir("roles"), tmp_path / "roles", symlinks=True)
    shutil.copytree(Path(build_mod.__file__).parent / "device", tmp_path / "builder/device",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert (tmp_path / "roles/release/files/edge_llm_device").is_symlink()
    shutil.copytree(data_dir("overlays"), tmp_path / "overlays", symlinks=True)
    targets = provision.roles_dirs()[1:]
    monkeypatch.setattr(provision, "roles_dirs", lambda: [tmp_path / "roles", *targets])
    monkeypatch.setattr(build_mod, "data_dir",
                        lambda name: tmp_path / name if name == "overlays" else data_dir(name))
    return tmp_path


def _ctx(**runtime: object) -> BuildContext:
    ctx = build_context("x86-gateway")
    if runtime:
        p = ctx.p.model_copy(update={"runtime": ctx.p.runtime.model_copy(update=runtime)})
        ctx.device = resolve.resolve(ctx.device.source, p)
    ctx.rootfs = _base()
    return ctx


def test_each_input_that_reaches_the_tree_changes_its_key(inputs: Path) -> None:
    before = tree_key(_ctx())
    changes = {}

    def changed(what: str, ctx: BuildContext | None = None) -> None:
        changes[what] = tree_key(ctx or _ctx())

    role_file = inputs / "roles/base/files/edge-llm-grow-root"
    role_file.write_text(role_file.read_text() + "# changed\n")
    changed("a role's file")
    role_file.write_text(role_file.read_text().removesuffix("# changed\n"))
    assert tree_key(_ctx()) == before  # back as it was: the entry is found again

    tool = inputs / "roles/release/files/edge_llm_device/release_tool.py"
    tool.write_text(tool.read_text() + "# changed\n")
    changed("a device tool (the release role's files, through its link)")
    tool.write_text(tool.read_text().removesuffix("# changed\n"))

    template = inputs / "roles/gateway/templates/edge-llm-gateway.service.j2"
    template.chmod(0o755)
    changed("a role file's mode")
    template.chmod(0o644)

    overlay = inputs / "overlays/x86-gateway/etc/hostname"
    overlay.write_text("another-name\n")
    changed("an overlay's file")
    overlay.write_text("edge-gateway\n")

    (inputs / "overlays/common/etc/motd").symlink_to("/etc/issue")
    changed("an overlay's link")
    (inputs / "overlays/common/etc/motd").unlink()

    ctx = _ctx()
    ctx.rootfs = _base("another-base")
    changed("the base rootfs", ctx)

    ctx = _ctx()
    ctx.authorized_keys = [*ctx.authorized_keys, "ssh-ed25519 AAAAOTHER admin"]
    changed("a variable that reaches the tree (an admin key)", ctx)

    ctx = _ctx()
    ctx.signers = ['edge-llm-release namespaces="edge-llm-release" ssh-ed25519 AAAAOTHER']
    changed("the keys whose releases the device trusts", ctx)

    assert tree_key(_ctx()) == before
    assert len(set(changes.values())) == len(changes) and before not in changes.values(), \
        changes


def test_what_steers_ansible_beside_the_roles_changes_the_key(
        inputs: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's ANSIBLE_* settings and the config file ansible-playbook would read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if Path("/etc/ansible/ansible.cfg").is_file():
        pytest.skip("this host has /etc/ansible/ansible.cfg")
    before = tree_key(_ctx())
    monkeypatch.setenv("ANSIBLE_JINJA2_NATIVE", "1")
    native = tree_key(_ctx())
    monkeypatch.delenv("ANSIBLE_JINJA2_NATIVE")
    (tmp_path / "ansible.cfg").write_text("[defaults]\njinja2_native = true\n")
    config = tree_key(_ctx())
    monkeypatch.setenv("ANSIBLE_PIPELINING", "0")  # ours: the builder sets it, whatever
    assert tree_key(_ctx()) == config
    assert len({before, native, config}) == 3


def test_a_tree_reaching_profile_setting_changes_the_key() -> None:
    ctx = _ctx()
    p = ctx.p.model_copy(update={"swap": ctx.p.swap.model_copy(update={"size": 1 << 30})})
    other = _ctx()
    other.device = resolve.resolve(ctx.device.source, p)
    assert tree_key(other) != tree_key(ctx)


def test_what_reaches_only_the_release_leaves_the_key_alone() -> None:
    """A runtime knob, the model, the engine and gateway builds and the release id all go
    into the signed release: the tree is reused."""
    before = tree_key(_ctx())
    assert tree_key(_ctx(context_length=2048)) == before
    assert tree_key(_ctx(threads=2)) == before
    ctx = _ctx()
    ctx.release_id = "r999999999999"
    ctx.bundle = release.Bundle(Path("/out/releases/r999999999999"))
    ctx.model = type(ctx.model)(Path("/cache/models/other/out/model.gguf"), "cd" * 32,
                                ctx.model.quant, ctx.model.format)
    ctx.engine_artifact.entry.key = "another-engine-build"  # type: ignore[union-attr]
    ctx.gateway.key = "another-gateway"  # type: ignore[union-attr]
    assert tree_key(ctx) == before


def test_a_profile_that_changes_only_runtime_knobs_shares_the_tree(tmp_path: Path) -> None:
    (tmp_path / "my-gateway.yaml").write_text(
        "extends: x86-gateway\nruntime:\n  context_length: 2048\n  threads: 2\n")
    rp = ProfileStore([tmp_path]).load("my-gateway")
    ctx = _ctx()
    ctx.device = resolve.resolve(rp, rp.concrete())
    assert ctx.name == "my-gateway"
    assert tree_key(ctx) == tree_key(_ctx())


def test_the_tree_run_gets_no_release_variable_and_no_role_reads_one() -> None:
    """What the image build's Ansible run is not given cannot reach the tree: the roles'
    templates and the tasks of every role but release (which uses them only to install a
    release on a live device) never name them."""
    given = build_mod.tree_vars(build_mod.role_vars(_ctx(), image_build=True))
    assert not set(given) & build_mod.RELEASE_ONLY_VARS
    assert set(build_mod.role_vars(_ctx(), image_build=True)) >= build_mod.RELEASE_ONLY_VARS
    for d in provision.roles_dirs():
        for f in sorted(d.rglob("*")):
            if not f.is_file() or f.suffix not in (".yml", ".j2") or "meta" in f.parts \
                    or "defaults" in f.parts or "vars" in f.parts:
                continue
            if f.parts[-3:-1] == ("release", "tasks"):
                continue
            text = f.read_text()
            for var in build_mod.RELEASE_ONLY_VARS:
                assert var not in text, f"{f}: {var} reaches the tree"


def test_a_repeated_overlay_layer_is_laid_once_where_it_comes_last() -> None:
    here = Path("/p")
    chain = [here / "base-debian.yaml", here / "x86-gateway.yaml", here / "x86-gateway.yaml"]
    assert [p.name for p in build_mod.overlay_layers(chain)] == ["common", "x86-gateway"]


# --- the step, with Ansible replaced --------------------------------------------------

def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "bin").symlink_to("usr/bin")


@pytest.fixture
def step_ctx(tmp_path: Path, inputs: Path, monkeypatch: pytest.MonkeyPatch):
    """A build context whose base rootfs is a small real tarball in a real cache, and
    an Ansible stand-in that records its runs and writes one file into the tree."""
    cache = Cache(tmp_path / "cache")
    src = tmp_path / "base-tree"
    _tree(src)

    def base(out: Path, _log: Path) -> dict:
        pack(src, out / "rootfs.tar")
        return {"packages": {"systemd": "252"}}

    runs: list[dict] = []

    def fake_ansible(ctx: BuildContext, given: dict, log_file: Path) -> None:
        """What the roles do to the tree, in small: a file from a variable."""
        assert ctx.rootfs_dir
        runs.append(given)
        log_file.write_text("PLAY RECAP\nrootfs : ok=1 changed=1 unreachable=0 failed=0\n")
        (ctx.rootfs_dir / "etc/admin").write_text(given["base_admin_user"] + "\n")
        for d in ("opt/edge-llm/releases", "var/lib/edge-llm/models"):  # the release role's
            (ctx.rootfs_dir / d).mkdir(parents=True)

    monkeypatch.setattr(build_mod, "provision_rootfs", fake_ansible)

    def make() -> BuildContext:
        ctx = build_context("x86-gateway")
        ctx.cache, ctx.out_root = cache, tmp_path / "out"
        ctx.rootfs = Rootfs(cache.get_or_build("rootfs", {"base": 1}, base, label="base"))
        ctx.work = tmp_path / f"work-{len(runs)}-{os.urandom(4).hex()}"
        ctx.work.mkdir()
        return ctx

    return make, runs, cache


def test_a_rebuild_takes_the_tree_from_the_cache_without_ansible(step_ctx, capsys) -> None:
    make, runs, _ = step_ctx
    first = make()
    build_mod.provision_tree(first)
    assert len(runs) == 1 and "provisioned rootfs: built" in capsys.readouterr().err
    again = make()
    build_mod.provision_tree(again)
    err = capsys.readouterr().err
    assert len(runs) == 1, "Ansible ran although nothing that reaches the tree changed"
    assert f"provisioned rootfs: reused (cache {first.provisioned.entry.key[:12]})" in err
    assert "Ansible: skipped, nothing that reaches the tree changed" in err
    assert again.rootfs_dir is None  # not even unpacked until something needs the tree
    assert again.provisioned.entry.key == first.provisioned.entry.key
    assert set(runs[0]) & build_mod.RELEASE_ONLY_VARS == set()


def test_a_corrupted_tree_entry_is_rebuilt_not_used(step_ctx) -> None:
    make, runs, _ = step_ctx
    ctx = make()
    build_mod.provision_tree(ctx)
    tarball = ctx.provisioned.tarball
    with tarball.open("r+b") as f:
        f.seek(600)
        f.write(b"X")
    build_mod.provision_tree(make())
    assert len(runs) == 2


def test_a_failed_provisioning_leaves_no_entry(step_ctx, monkeypatch) -> None:
    make, _, cache = step_ctx

    def fake_ansible_cut(ctx: BuildContext, given: dict, log_file: Path) -> None:
        raise KeyboardInterrupt  # Ctrl-C halfway through the roles

    monkeypatch.setattr(build_mod, "provision_rootfs", fake_ansible_cut)
    with pytest.raises(KeyboardInterrupt):
        build_mod.provision_tree(make())
    kind = cache.root / "provisioned"
    assert [p.name for p in kind.iterdir() if not p.name.startswith(".lock")] == []


def test_the_release_is_laid_where_the_device_takes_it_in(step_ctx, tmp_path, monkeypatch
                                                           ) -> None:
    """lay_release copies the signed tree and the model as the role did, and hands the
    rest to the device's own tool in the chroot (seen here as the command it runs)."""
    make, _, _ = step_ctx
    ctx = make()
    build_mod.provision_tree(ctx)
    tree = tmp_path / "releases" / ctx.release_id / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/llama-server").write_text("elf")
    (tree / "bin/llama-server").chmod(0o755)
    (tree / "release.json").write_text("{}")
    ctx.bundle = release.Bundle(tree.parent)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    ctx.model = type(ctx.model)(model, "ab" * 32, "Q4_K_M", "gguf")
    commands = []
    monkeypatch.setattr(build_mod, "run", lambda args, **kw: commands.append(args))
    root = build_mod.tree_with_release(ctx)
    rdir = root / "opt/edge-llm/releases" / ctx.release_id
    assert (rdir / "bin/llama-server").read_text() == "elf"
    assert stat.S_IMODE((rdir / "bin/llama-server").stat().st_mode) == 0o755
    assert stat.S_IMODE(rdir.stat().st_mode) == 0o755
    placed = root / "var/lib/edge-llm/models" / f"{'ab' * 32}.gguf"
    assert placed.read_bytes() == b"GGUF" and stat.S_IMODE(placed.stat().st_mode) == 0o644
    assert (root / "etc/admin").read_text() == "edge\n"  # the provisioned tree under it
    assert commands == [["chroot", root, "/usr/local/lib/edge-llm/edge-llm-release",
                         "install", ctx.release_id]]


# --- the tarball ----------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="owners and device nodes need root")
def test_the_tarball_keeps_owners_modes_links_device_nodes_and_capabilities(
        tmp_path: Path) -> None:
    src, back = tmp_path / "src", tmp_path / "back"
    _tree(src)
    os.chown(src / "etc/os-release", 107, 113)
    os.mknod(src / "etc/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep
    try:
        os.setxattr(src / "usr/bin/tool", "security.capability", cap)
    except OSError:
        pytest.skip("this filesystem keeps no capabilities")
    os.setxattr(src / "etc/os-release", "user.note", b"kept")
    back.mkdir()
    pack(src, tmp_path / "t.tar")
    unpack(tmp_path / "t.tar", back)
    st = (back / "etc/os-release").stat()
    assert (st.st_uid, st.st_gid) == (107, 113)
    assert stat.S_IMODE((back / "usr/bin/tool").stat().st_mode) == 0o4755
    assert (back / "usr/bin/tool").stat().st_ino == (back / "usr/bin/tool-again").stat().st_ino
    assert os.readlink(back / "bin") == "usr/bin"
    assert stat.S_ISCHR((back / "etc/null").lstat().st_mode)
    assert os.getxattr(back / "usr/bin/tool", "security.capability") == cap
    assert os.getxattr(back / "etc/os-release", "user.note") == b"kept"


# --- the disk image, reused when its tree, release and layout are the same ------------

@pytest.fixture
def image_ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A build context at the assemble step: a provisioned entry, a signed release's two
    files, and the x86 target's assembly replaced by one that writes small files and
    counts its runs (laying the release is tested above)."""
    cache = Cache(tmp_path / "cache")
    tree = cache.get_or_build("provisioned", {"t": 1},
                              lambda out, _log: (out / "rootfs.tar").write_text("t") and None,
                              label="tree")
    bundle = tmp_path / "releases/r0123456789ab"
    (bundle / "tree").mkdir(parents=True)
    (bundle / "tree/release.json").write_text('{"release_id": "r0123456789ab"}')
    (bundle / "tree/release.json.sig").write_text("signature")
    made: list[int] = []

    def fake_assemble(ctx: BuildContext):
        made.append(1)
        out = ctx.work / "out"
        out.mkdir(exist_ok=True)
        files = {"image": out / "image.raw", "bmap": out / "image.bmap",
                 "compressed": out / "image.raw.zst"}
        for f in files.values():
            f.write_text(f"{f.name} {len(made)}")
        return build_mod.Delivery("disk-image", files, sha256="ab" * 32, size=11,
                                  info={"layout": "uefi-gpt"})

    def make() -> BuildContext:
        ctx = build_context("x86-gateway")
        ctx.cache, ctx.out_root = cache, tmp_path / "out"
        ctx.provisioned = Rootfs(tree)
        ctx.bundle = release.Bundle(bundle)
        ctx.work = tmp_path / f"work-{os.urandom(4).hex()}"
        ctx.work.mkdir()
        return ctx

    monkeypatch.setattr(build_mod, "tree_with_release", lambda ctx: None)
    monkeypatch.setattr(X86, "assemble", fake_assemble)
    return make, made, bundle


def test_the_same_tree_release_and_layout_reuse_the_image(image_ctx, capsys) -> None:
    make, made, _ = image_ctx
    first = make()
    build_mod.assemble(first)
    again = make()
    build_mod.assemble(again)
    assert len(made) == 1
    assert "disk-image: reused (cache " in capsys.readouterr().err
    d = again.delivery
    assert list(d.files) == ["image", "bmap", "compressed"]  # the first is the main file
    assert d.files["image"] == again.work / "out/image.raw"
    assert d.files["image"].read_text() == "image.raw 1"
    assert d.to_json() == first.delivery.to_json()


def test_a_new_release_or_layout_makes_the_image_again(image_ctx) -> None:
    make, made, bundle = image_ctx
    assert X86.assembly_inputs(make()) is not None  # the x86 image is one that is reused
    build_mod.assemble(make())
    build_mod.assemble(make())
    assert len(made) == 1
    (bundle / "tree/release.json.sig").write_text("another key's signature")
    build_mod.assemble(make())
    assert len(made) == 2
    ctx = make()
    p = ctx.p.model_copy(update={"x86": ctx.p.x86.model_copy(update={"esp_size": 512 << 20})})
    ctx.device = resolve.resolve(ctx.device.source, p)
    build_mod.assemble(ctx)
    assert len(made) == 3
    ctx = make()
    ctx.provisioned = Rootfs(Entry(Path("/c/p/other"), {"key": "other-tree", "kind": "p",
                                                        "outputs": {}}))
    build_mod.assemble(ctx)
    assert len(made) == 4
