"""Commands that make artifacts and try them: engine, model, cache, doctor, build, vm,
verify."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from .. import doctor as doctor_mod
from .. import plugins, resolve
from ..cache import Cache
from ..contracts import Device
from ..errors import BuilderError, display_path
from ..model import pipeline as model_pipeline
from ..model import quality as model_quality
from ..model import synth
from ..units import format_size
from .common import (
    app,
    cache_option,
    json_option,
    load_device,
    model_file_option,
    model_source_option,
    out,
    out_option,
    print_json,
    profile_option,
    profiles_dir_option,
)

# --- engine ---------------------------------------------------------------------------

@app.group("engine")
def engine_app() -> None:
    """Build the inference engine for a profile's target."""


@engine_app.command("build")
@profile_option
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compile jobs.")
@cache_option
@profiles_dir_option
@json_option
def engine_build(profile: str, jobs: int | None, cache_dir: Path | None,
                 profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Build (or take from the cache) the profile's engine for its target."""
    d = load_device(profile, profiles_dir)
    p = d.profile
    doctor_mod.require(*d.target.host_stages(p))
    art = d.engine.build(p, d.platform, Cache(cache_dir), jobs=jobs,
                         base_dir=d.engine_base_dir)
    if art is None:
        raise BuilderError(f"{d.name}: {p.engine.kind} for {p.target} is built on the "
                           f"device; `builder engine recipe --profile {profile}` shows the "
                           "commands")
    files = {name: meta["sha256"] for name, meta in art.entry.manifest["outputs"].items()
             if "sha256" in meta}
    if json_:
        return print_json({"path": str(art.entry.out), "key": art.entry.key,
                           "cached": art.entry.hit, "files": files})
    out.print(f"engine: {art.entry.out} ({'cached' if art.entry.hit else 'built'}, "
              f"{format_size(art.entry.size)})")
    for name, sha in files.items():
        if name.startswith("bin/") and not name.endswith(".so") and ".so." not in name:
            out.print(f"  {name.removeprefix('bin/')}  sha256 {sha[:16]}")


@engine_app.command("recipe")
@profile_option
@profiles_dir_option
@json_option
def engine_recipe(profile: str, profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Print the build commands for the profile's engine (also for on-device builds)."""
    d = load_device(profile, profiles_dir)
    recipe = d.engine.recipe(d.profile, d.platform)
    if json_:
        return print_json(recipe.to_json())
    for note in recipe.notes:
        out.print(f"# {note}")
    for line in recipe.commands():
        sys.stdout.write(line + "\n")


# --- model ----------------------------------------------------------------------------

@app.group("model")
def model_app() -> None:
    """Fetch, convert, quantize or synthesize the profile's model."""


synthetic_option = click.option(
    "--synthetic", is_flag=True,
    help="Use random weights in the exact shape of the profile's model (no download).")
lock_option = click.option("--lock", type=click.Path(path_type=Path),
                           help="Lock file pinning every model file's sha256.")


def _fetch(d: Device, cache: Cache, model_file: Path | None, synthetic: bool,
           lock: Path | None) -> model_pipeline.Fetched:
    p = d.profile
    if synthetic:
        entry = synth.cached(p.model.id, cache)
        model_file = entry.out
    return model_pipeline.fetch(p.model.source, cache, model_file=model_file, lock=lock,
                                base_dir=d.source.dir_of("model", "source", "path"))


@model_app.command("fetch")
@profile_option
@model_file_option
@synthetic_option
@lock_option
@click.option("--write-lock", type=click.Path(path_type=Path),
              help="Write the fetched files' sha256 to this lock file.")
@cache_option
@profiles_dir_option
@json_option
def model_fetch(profile: str, model_file: Path | None, synthetic: bool, lock: Path | None,
                write_lock: Path | None, cache_dir: Path | None,
                profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Get the model files and check them against their pins."""
    f = _fetch(load_device(profile, profiles_dir), Cache(cache_dir), model_file, synthetic,
               lock)
    if write_lock:
        model_pipeline.write_lock(f, write_lock)
    if json_:
        return print_json({"path": str(f.path), "kind": f.kind, "files": f.files,
                            "origin": f.origin})
    out.print(f"{f.kind}: {f.path}")
    for name, sha in f.files.items():
        out.print(f"  {name}  {sha}")


@model_app.command("convert")
@profile_option
@model_file_option
@synthetic_option
@lock_option
@cache_option
@profiles_dir_option
def model_convert(profile: str, model_file: Path | None, synthetic: bool,
                  lock: Path | None, cache_dir: Path | None,
                  profiles_dir: tuple[Path, ...]) -> None:
    """Convert the Hugging Face model to the engine's unquantized format with its own
    tools (llama.cpp: an F16 GGUF with convert_hf_to_gguf.py)."""
    d = load_device(profile, profiles_dir)
    cache = Cache(cache_dir)
    f = _fetch(d, cache, model_file, synthetic, lock)
    path = d.engine.convert(d.profile, f, cache, source_base=d.engine_base_dir)
    out.print(f"converted: {path}")


@model_app.command("quantize")
@profile_option
@click.option("--quant", help="Quantization (default: the profile's).")
@model_file_option
@synthetic_option
@lock_option
@cache_option
@profiles_dir_option
@json_option
def model_quantize(profile: str, quant: str | None, model_file: Path | None,
                   synthetic: bool, lock: Path | None, cache_dir: Path | None,
                   profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Fetch, convert and quantize: the model the profile's engine serves (for llama.cpp
    a GGUF file)."""
    d = load_device(profile, profiles_dir)
    p = d.profile
    if quant:
        from ..profiles import with_overrides

        p = with_overrides(d.source, {("model", "quant"): ("--quant", quant)})  # type: ignore[arg-type]
    cache = Cache(cache_dir)
    f = _fetch(d, cache, model_file, synthetic, lock)
    result = d.engine.model(p, f, cache, source_base=d.engine_base_dir)
    if json_:
        return print_json({"path": str(result.path), "sha256": result.sha256,
                           "quant": result.quant, "format": result.format,
                           "bytes": result.bytes})
    out.print(f"{result.quant} {result.format}: {result.path} ({format_size(result.bytes)})")
    out.print(f"  sha256 {result.sha256}")


@model_app.command("quality")
@profile_option
@click.option("--model", "model_id", help="Another catalog model than the profile's (see "
              "`builder models list`); with --synthetic, random weights in its shape.")
@click.option("--quant", "quants", multiple=True,
              help="A quantization to measure (repeatable) [default: the profile's].")
@click.option("--all", "all_quants", is_flag=True,
              help="Every quantization the engine offers.")
@click.option("--corpus", type=click.Path(path_type=Path), default=model_quality.CORPUS,
              show_default=True, help="The English text read by the reference and each "
              "quantization.")
@click.option("--ctx", default=model_quality.CTX, show_default=True,
              type=click.IntRange(min=64),
              help="Tokens per chunk (the second half of each is scored).")
@click.option("--chunks", default=model_quality.CHUNKS, show_default=True,
              type=click.IntRange(min=1),
              help="Chunks of the text read.")
@model_file_option
@synthetic_option
@lock_option
@cache_option
@profiles_dir_option
@json_option
def model_quality_cmd(profile: str, model_id: str | None, quants: tuple[str, ...],
                      all_quants: bool, corpus: Path, ctx: int, chunks: int,
                      model_file: Path | None, synthetic: bool, lock: Path | None,
                      cache_dir: Path | None, profiles_dir: tuple[Path, ...],
                      json_: bool) -> None:
    """How close each quantization stays to the unquantized model, measured here: the
    mean KL divergence of its token distributions from the F16 model's over a text, how
    often its most likely token is the F16 model's, and its perplexity against the F16
    model's (llama.cpp: llama-perplexity --kl-divergence). Each result is cached with the
    quantized file."""
    d = load_device(profile, profiles_dir)
    if model_id:
        from ..profiles import with_overrides

        d = resolve.resolve(d.source, with_overrides(d.source, {
            ("model", "id"): ("--model", model_id)}))
    e = d.engine
    if all_quants and quants:
        raise BuilderError("give --quant or --all, not both")
    names = [q.name for q in e.quants] if all_quants else [
        _quant_name(e, q) for q in (quants or (d.profile.model.quant,))]
    cache = Cache(cache_dir)
    f = _fetch(d, cache, model_file, synthetic, lock)
    if synthetic:  # not the cache path it is kept at: what the results are of
        f = dataclasses.replace(f, origin=model_quality.SYNTHETIC)
    found = model_quality.measure(d, f, cache, names, corpus=corpus, ctx=ctx, chunks=chunks)
    if json_:
        return print_json({"model": d.profile.model.id, "origin": f.origin,
                           "results": found})
    t = Table("quant", "file", "mean KL divergence", "99% KLD", "same top token",
              "PPL / PPL(F16)",
              title=f"{d.profile.model.id} ({f.origin}) against F16: "
                    f"{found[0].get('chunks', chunks)} chunks of {ctx} tokens of "
                    f"{display_path(corpus)}")
    for r in found:
        t.add_row(r["quant"], format_size(r["bytes"]),
                  f"{r['kld_mean']:.5f} ± {r['kld_mean_uncertainty']:.5f}",
                  f"{r['kld_p99']:.4f}",
                  f"{r['top1_percent']:.2f}% ± {r['top1_percent_uncertainty']:.2f}",
                  f"{r['ppl_ratio']:.4f}")
    out.print(t)


def _quant_name(e, name: str) -> str:
    q = e.quant(name)
    if q is None:
        raise BuilderError(f"--quant {name}: not a {e.kind} quantization; choose one of "
                           f"{', '.join(x.name for x in e.quants)}")
    return q.name


@model_app.command("synth")
@click.option("--model", "model_id", default="qwen2.5-0.5b-instruct", show_default=True,
              help="Catalog model id whose shape to copy, or 'tiny'.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@cache_option
def model_synth(model_id: str, seed: int, cache_dir: Path | None) -> None:
    """Make a random-weight Hugging Face model in a catalog model's exact shape."""
    entry = synth.cached(model_id, Cache(cache_dir), seed=seed)
    out.print(f"synthetic {model_id}: {entry.out} ({format_size(entry.size)})")


# --- cache ----------------------------------------------------------------------------

@app.group("cache")
def cache_app() -> None:
    """Inspect, verify and prune the artifact cache."""


@cache_app.command("list")
@cache_option
@json_option
def cache_list(cache_dir: Path | None, json_: bool) -> None:
    """List cache entries."""
    cache = Cache(cache_dir)
    entries = cache.entries()
    if json_:
        return print_json([{"kind": e.kind, "key": e.key, "label": e.manifest.get("label"),
                             "bytes": e.size, "created": e.manifest.get("created"),
                             "path": str(e.path)} for e in entries])
    t = Table("kind", "key", "what", "size", "created", title=f"Cache {cache.root}")
    for e in entries:
        t.add_row(e.kind, e.key[:12], e.manifest.get("label", ""), format_size(e.size),
                  e.manifest.get("created", ""))
    out.print(t)
    out.print(f"{len(entries)} entries, {format_size(sum(e.size for e in entries))}")


@cache_app.command("verify")
@cache_option
def cache_verify(cache_dir: Path | None) -> None:
    """Re-hash every entry; exit 1 if any is corrupted (the next build rebuilds it)."""
    bad = 0
    for e in Cache(cache_dir).entries():
        problems = e.problems()
        if problems:
            bad += 1
            out.print(f"[red]corrupted[/] {e.kind}/{e.key[:12]} "
                      f"{e.manifest.get('label', '')}: {'; '.join(problems[:3])}")
        else:
            out.print(f"[green]ok[/] {e.kind}/{e.key[:12]} {e.manifest.get('label', '')}")
    if bad:
        raise BuilderError(f"{bad} corrupted cache entr{'y' if bad == 1 else 'ies'}; they are "
                           f"rebuilt on next use, or remove them with `builder cache prune`")


@cache_app.command("prune")
@click.option("--older-than", type=float, metavar="DAYS",
              help="Remove entries not used for this many days.")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@cache_option
def cache_prune(older_than: float | None, everything: bool, dry_run: bool,
                cache_dir: Path | None) -> None:
    """Remove unused entries and leftovers of interrupted builds."""
    if older_than is None and not everything:
        raise BuilderError("say what to prune: --older-than DAYS or --all")
    removed = Cache(cache_dir).prune(older_than_days=older_than, everything=everything,
                                     dry_run=dry_run)
    for what, size in removed:
        out.print(f"{'would remove' if dry_run else 'removed'} {what} ({format_size(size)})")
    out.print(f"{len(removed)} removed, {format_size(sum(s for _, s in removed))} freed"
              + (" (dry run)" if dry_run else ""))


# --- doctor ---------------------------------------------------------------------------

@app.command("doctor")
@click.option("--install", is_flag=True, help="Install what is missing with apt-get.")
@click.option("--stage", "stages", multiple=True, type=click.Choice(doctor_mod.stages()),
              help="Check only these stages (repeatable); default: every build stage, "
              "not `test` (the test suite's browser).")
def doctor(install: bool, stages: tuple[str, ...]) -> None:
    """Check the host packages every stage needs."""
    stages = stages or doctor_mod.build_stages()
    if install:
        doctor_mod.install(doctor_mod.missing(stages))
    gone = {n.tool for n in doctor_mod.missing(stages)}
    t = Table("stage", "tool", "package", "status")
    for n in (n for n in doctor_mod.NEEDS if n.stage in stages):
        t.add_row(n.stage, n.tool, n.package,
                  "[red]missing[/]" if n.tool in gone else "[green]ok[/]")
    out.print(t)
    if gone:
        raise BuilderError(f"missing: {', '.join(sorted(gone))}; run `builder doctor "
                           f"--install`")


# --- build ----------------------------------------------------------------------------

def vendor_input_options(f):
    """--<flag> PATH for every file a target's build takes from its vendor (a BSP, an
    OS image), as the targets declare them."""
    for t in reversed(plugins.TARGETS.values()):
        for vi in reversed(t.vendor_inputs):
            f = click.option(f"--{vi.flag}", vi.name,
                             type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             help=f"{t.name}: {vi.help}")(f)
    return f


@app.command("build")
@profile_option
@model_file_option
@model_source_option
@click.option("--authorized-key", "authorized_keys", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A public key file to let into the image's admin user (repeatable); "
              "the builder's own key is always added.")
@out_option
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compile jobs.")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Private SSH key that signs the image's release and that its devices "
              "trust for updates (KEY.pub beside it); default: the builder's own.")
@vendor_input_options
@click.option("--with-vm-image", is_flag=True,
              help="Also make what QEMU needs to boot this build when the device's image "
              "cannot boot there by itself (Pi 5: Debian's cloud kernel in the rootfs and "
              "an initramfs), for `builder vm` and tests.")
@cache_option
@profiles_dir_option
def build_cmd(profile: str, model_file: Path | None, model_source: str | None,
              authorized_keys: tuple[Path, ...],
              out_root: Path, jobs: int | None, signing_key: Path | None,
              with_vm_image: bool, cache_dir: Path | None,
              profiles_dir: tuple[Path, ...], **vendor: Path | None) -> None:
    """Build what the profile's target delivers (a disk image, a flash package) into
    OUT/<profile>/."""
    from .. import build as build_mod
    from ..contracts import BuildContext
    from ..sshkey import builder_key

    d = load_device(profile, profiles_dir)
    doctor_mod.require(*d.target.host_stages(d.profile))
    given = {k: v for k, v in vendor.items() if v is not None}
    own = {vi.name for vi in d.target.vendor_inputs}
    for name in given.keys() - own:
        takes = ", ".join(f"--{vi.flag}" for vi in d.target.vendor_inputs) or "none"
        raise BuilderError(f"--{name.replace('_', '-')}: a {d.target.name} build does not "
                           f"take it (its vendor inputs: {takes})")
    cache = Cache(cache_dir)
    _, pub = builder_key(cache)
    keys = [pub, *(k.read_text().strip() for k in authorized_keys)]
    ctx = BuildContext(device=d, cache=cache, out_root=out_root, model_file=model_file,
                       model_source=model_source, authorized_keys=keys, jobs=jobs,
                       signing_key=signing_key, vendor_inputs=given, vm_image=with_vm_image)
    final = build_mod.build(ctx)
    m = json.loads((final / "manifest.json").read_text())
    d = m["delivery"]
    if d:
        main = next(iter(d["files"].values()))
        out.print(f"{d['kind']}: {display_path(final / main)} "
                  f"({format_size(d['bytes'])}, sha256 {d['sha256'][:16]})")
    out.print(f"model: {m['model']['origin']} {m['model']['quant']} "
              f"sha256 {m['model']['sha256'][:16]}")
    out.print(f"next: builder vm --profile {profile}")


# --- flash ------------------------------------------------------------------------------

@app.command("flash")
@profile_option
@click.option("--device", help="The card or disk to write, e.g. /dev/sdb (the whole disk).")
@click.option("--to-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the image to this file instead (tests, VMs).")
@click.option("--force", is_flag=True,
              help="--to-file: replace a file (or a link) already at the path; a link is "
              "replaced, never written through.")
@click.option("--yes", is_flag=True, help="Do not ask before writing.")
@click.option("--dry-run", is_flag=True, help="Say exactly what would be done; write nothing.")
@click.option("--force-fixed", is_flag=True,
              help="Allow a fixed (non-removable) disk; never the disk this machine runs "
              "from.")
@click.option("--massflash", type=click.IntRange(min=1), metavar="N",
              help="Jetson: flash up to N boards in recovery mode at once.")
@click.option("--no-package", is_flag=True,
              help="Jetson: generate and flash in one run instead of from the package the "
              "build made.")
@out_option
@profiles_dir_option
def flash_cmd(profile: str, device: str | None, to_file: Path | None, force: bool,
              yes: bool, dry_run: bool, force_fixed: bool, massflash: int | None,
              no_package: bool, out_root: Path, profiles_dir: tuple[Path, ...]) -> None:
    """Write the profile's build to a device: a disk image to an SD card, USB stick or
    SSD (bmaptool, every block's checksum checked), a Jetson flash package to boards in
    recovery mode."""
    from ..flash import Request, ask

    d = load_device(profile, profiles_dir)
    mpath, m = _manifest(out_root, d.name)
    request = Request(device=device, to_file=to_file, force=force, yes=yes,
                      dry_run=dry_run, force_fixed=force_fixed, massflash=massflash,
                      no_package=no_package, confirm=ask, say=out.print)
    where = d.target.flash(mpath.parent, m, resolve.built_profile(m), request)
    if not dry_run:
        out.print(f"[green]✓[/] {d.name} (release {m['release_id']}) written to {where}")


# --- vm and verify ----------------------------------------------------------------------

def _manifest(out_root: Path, name: str) -> tuple[Path, dict]:
    path = out_root / name / "manifest.json"
    if not path.is_file():
        raise BuilderError(f"{display_path(path)}: no build of {name} here; run `builder "
                           f"build --profile {name}` first")
    return path, json.loads(path.read_text())


@app.command("vm")
@profile_option
@out_option
@click.option("--ssh-port", default=2222, show_default=True, help="Host port for SSH.")
@click.option("--api-port", default=8080, show_default=True,
              help="Host port for the appliance's public service port.")
@click.option("--memory", "memory_mb", default=2048, show_default=True, help="MiB of RAM.")
@click.option("--detach", is_flag=True, help="Leave it running in the background.")
@click.option("--stop", is_flag=True, help="Stop the VM started with --detach.")
@cache_option
@profiles_dir_option
def vm_cmd(profile: str, out_root: Path, ssh_port: int, api_port: int, memory_mb: int,
           detach: bool, stop: bool, cache_dir: Path | None,
           profiles_dir: tuple[Path, ...]) -> None:
    """Boot the built image in QEMU (KVM when it works, TCG otherwise)."""
    from .. import vm
    from ..sshkey import builder_key

    d = load_device(profile, profiles_dir)
    rp, p = d.source, d.profile
    state = out_root / f".vm-{d.name}"
    if stop:
        was = vm.stop(state)
        out.print(f"{rp.name}: {'stopped' if was else 'no VM was running'}")
        return
    doctor_mod.require("vm", *d.target.vm_stages)
    mpath, m = _manifest(out_root, rp.name)
    key, _ = builder_key(Cache(cache_dir))
    user = p.os.admin_user
    spec = vm.for_build(mpath.parent, d.target.vm_machine, ssh_port=ssh_port,
                        forwards={api_port: p.service.port}, memory_mb=memory_mb,
                        cpus=min(2, os.cpu_count() or 1), state_dir=state)

    def ready() -> None:
        out.print(f"{rp.name} is up (release {m['release_id']}):")
        out.print(f"  ssh -i {key} -p {ssh_port} {user}@127.0.0.1")
        out.print(f"  builder verify --profile {rp.name} --host ssh://{user}@127.0.0.1:"
                  f"{ssh_port}")
        out.print(f"  public port: http://127.0.0.1:{api_port}/")
        if (state / vm.ACCEL).read_text().strip() == "tcg":
            out.print("  emulated CPU (TCG, no KVM): inference runs many times slower than "
                      "on the device, so its speed bars (verify.*) do not apply")

    if detach:
        handle = vm.start(spec)
        vm.wait_ssh(handle, user, key, timeout=600)
        ready()
        out.print(f"  stop with: builder vm --profile {rp.name} --stop")
    else:
        vm.run_foreground(spec, on_ready=ready, user=user, key=key)


@app.command("verify")
@profile_option
@click.option("--host", "host_url", help="ssh://user@host:port of the device or VM.")
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An Ansible inventory: verify every host in it.")
@out_option
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="JUnit XML report (default OUT/<profile>/verify-<host>.xml).")
@click.option("--api-url", help="Where this machine reaches the device's public port, "
              "when not http://HOST:<service.port> (e.g. a VM's forwarded port); with "
              "--host only.")
@click.option("--select", metavar="EXPR",
              help="Only the checks matching this pytest -k expression, e.g. performance "
              "or 'gateway and not page'.")
@click.option("--release", "release_id", metavar="ID",
              help="The device serves this release (deployed after the build): expect "
              "its model, engine, settings and plan, the build's system.")
@cache_option
@profiles_dir_option
def verify_cmd(profile: str, host_url: str | None, inventory: Path | None, out_root: Path,
               junit: Path | None, api_url: str | None, select: str | None,
               release_id: str | None, cache_dir: Path | None,
               profiles_dir: tuple[Path, ...]) -> None:
    """Run the testinfra suite against a device: exit 0 when every check passes. The
    speed checks hold the device to the profile's verify.* thresholds as given now
    (with --release: as the release's profile gave them)."""
    from .. import verify
    from ..fleet import release as release_mod
    from ..fleet import trust
    from ..schema import Service, Verify
    from ..sshkey import builder_key

    d = load_device(profile, profiles_dir)
    rp, p = d.source, d.profile
    if bool(host_url) == bool(inventory):
        raise BuilderError("say where: --host ssh://user@host:port or --inventory FILE")
    if api_url and inventory:
        raise BuilderError("--api-url names one device: use it with --host")
    mpath, built = _manifest(out_root, rp.name)
    state = out_root / f".verify-{rp.name}"
    service, thresholds = p.service, p.verify.model_dump(mode="json")
    if release_id:
        rel = trust.open_release(release_mod.find(out_root / "releases", release_id).dir,
                                 trust.signers(None, out_root))
        expected = verify.as_deployed(built, rel)
        profile_of = expected["inputs"]["profile"]
        service = Service.model_validate(profile_of["service"])
        thresholds = Verify.model_validate(profile_of["verify"]).model_dump(mode="json")
        state.mkdir(parents=True, exist_ok=True)
        mpath = state / f"deployed-{rel.release_id}.json"
        mpath.write_text(json.dumps(expected, indent=2) + "\n")
    user = p.os.admin_user
    targets = ([verify.parse_host(host_url, user)] if host_url
               else verify.inventory_targets(inventory, user) if inventory else [])
    key, _ = builder_key(Cache(cache_dir))
    answers = None
    if thresholds.get("min_agreement"):  # against the release the device should serve
        expected = json.loads(mpath.read_text())
        built_release = (expected.get("release") or {}).get("dir")
        if not release_id and not isinstance(built_release, str):
            raise BuilderError(f"{display_path(mpath)} names no release: build "
                               f"{rp.name} again")
        opened = rel if release_id else trust.open_release(
            Path(built_release), trust.signers(None, out_root))
        answers = verify.answers_for(d, expected, opened, Cache(cache_dir), thresholds,
                                     lambda s: out.print(s, markup=False))
    failed = []
    for t in targets:
        report = junit or out_root / rp.name / f"verify-{t.host}-{t.port}.xml"
        rc = verify.run_suite(mpath, t, key, state, report,
                              verify.api_url_of(t, service, api_url),
                              thresholds=thresholds, select=select,
                              checks=d.target.verify_checks, answers=answers)
        out.print(f"{t.url}: {'[green]passed[/]' if rc == 0 else '[red]failed[/]'} "
                  f"(JUnit: {display_path(report)})")
        if rc:
            failed.append(t.url)
    if failed:
        raise BuilderError(f"verification failed on {', '.join(failed)}")


@app.command("bench")
@profile_option
@click.option("--host", "host_url", required=True,
              help="ssh://user@host:port of the device or VM.")
@click.option("--api-url", help="Where this machine reaches the device's public port, "
              "when not http://HOST:<service.port> (e.g. a VM's forwarded port).")
@click.option("--requests", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed decode requests (after one to warm up).")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=2),
              help="Tokens asked for by each decode request.")
@click.option("--prefill-words", default=512, show_default=True,
              type=click.IntRange(min=16), help="Size of the long prompts that time prefill "
              "(about a token a word; each opens differently, so none is cached).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the measurements as JSON to this file.")
@out_option
@json_option
@cache_option
@profiles_dir_option
def bench_cmd(profile: str, host_url: str, api_url: str | None, requests: int,
              max_tokens: int, prefill_words: int, record_path: Path | None, out_root: Path,
              json_: bool, cache_dir: Path | None, profiles_dir: tuple[Path, ...]) -> None:
    """Measure one device through its public port, the same way on every target: decode
    tok/s, time to first token p50/p95, prefill tok/s, and (over SSH) the engine's peak
    resident memory. Exit 0 when it meets the profile's verify.* bars, 1 when not."""
    from .. import verify
    from ..lab import bench
    from ..lab.run import write_json
    from ..progress import step
    from ..run import run
    from ..sshkey import builder_key

    d = load_device(profile, profiles_dir)
    rp, p = d.source, d.profile
    _, m = _manifest(out_root, rp.name)
    target = verify.parse_host(host_url, p.os.admin_user)
    url = verify.api_url_of(target, p.service, api_url)
    key, _ = builder_key(Cache(cache_dir))
    ssh_config = verify.ssh_to(target, key, out_root / f".verify-{rp.name}")

    def ssh(command: str, what: str) -> str:
        return run(verify.ssh_command(target, ssh_config, command), what=what, timeout=120)

    with step(f"benchmarking {target.url} through {url}"):
        try:
            record = bench.on_device(m, url, ssh, requests=requests, max_tokens=max_tokens,
                                     prefill_words=prefill_words)
        except bench.BenchFailed as e:
            raise BuilderError(f"--host {target.url}: {e}") from None
    checks = bench.compare(record, bench.thresholds(p, m))
    doc = {"host": target.url, "profile": rp.name, "release": m["release_id"],
           "model": m["model"], "benchmark": record, "checks": [vars(c) for c in checks]}
    if record_path:
        write_json(record_path, doc)
    if json_:
        print_json(doc)
    else:
        t = Table("measured", "value", title=f"{target.url} ({rp.name}, "
                  f"{m['model'].get('id')} {m['model'].get('quant')})")
        for k, label, fmt in bench.ROWS:
            if record.get(k) is not None:
                t.add_row(label, fmt(record[k]))
        out.print(t)
        for c in checks:
            out.print(f"  {'[green]ok[/]' if c.ok else '[red]under the bar[/]'}  "
                      f"{bench.describe(c)}")
        if p.tuned:  # what `builder tune` measured on the device: defaults vs tuned
            from ..tuned import load as load_tuned

            title, rows = bench.tuned_side_by_side(
                load_tuned(rp.dir_of("tuned") / p.tuned).data)
            tt = Table("measured by builder tune", "defaults", "tuned", "tuned / defaults",
                       title=title)
            for row in rows:
                tt.add_row(*row)
            out.print(tt)
    if not all(c.ok for c in checks):
        raise SystemExit(1)
