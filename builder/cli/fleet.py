"""`builder release`, `builder deploy`, `builder rollback`, `builder fleet status`,
`builder bundle export/import` (a release carried into a closed site as one file) and
`builder vagrant-box` (a build as a box for the lab's Vagrantfile)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import doctor
from ..cache import Cache
from ..contracts import BuildContext
from ..errors import BuilderError, display_path
from ..fleet import bundle as bundle_mod
from ..fleet import deploy as fleet
from ..fleet import release as release_mod
from ..fleet import trust
from ..log import console
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
    profile_option,
    profiles_dir_option,
)
from .common import print_json as _print_json

signing_key_option = click.option(
    "--signing-key", type=click.Path(dir_okay=False, path_type=Path),
    help="Private SSH key that signs the release (KEY.pub beside it); default: the "
    "builder's own, made on first use in the cache (signing/release_ed25519).")
inventory_option = click.option(
    "--inventory", "-i", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Ansible inventory of the fleet (INI or YAML; no passwords in it).")
limit_option = click.option("--limit", "-l", help="Only these hosts (Ansible --limit).")
known_hosts_option = click.option(
    "--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
    help="known_hosts file for the fleet (default: ~/.ssh/known_hosts).")
accept_new_option = click.option(
    "--accept-new-host-keys", is_flag=True,
    help="Record the host key of a device seen for the first time (a changed key is "
    "still refused). Off by default: unknown hosts are refused.")
def fleet_options(f):
    """Options every fleet command takes: where the hosts are and how to reach them."""
    for option in reversed((inventory_option, limit_option, known_hosts_option,
                            accept_new_option, out_option, cache_option, json_option)):
        f = option(f)
    return f


allowed_signers_option = click.option(
    "--allowed-signers", type=click.Path(dir_okay=False, path_type=Path),
    help="Keys a release must be signed by, as a device has them (its "
    "/etc/edge-llm/allowed_signers); default: the site's OUT/allowed_signers, which "
    "every release made here adds its signing key to.")


gate_option = click.option("--gate-timeout", default=300, show_default=True,
                           type=click.IntRange(min=5),
                           help="Seconds a release has to pass its health gate on a device.")


def rollout_options(f):
    """How a rollout goes (playbooks/deploy.yml's variables besides the release)."""
    for opt in reversed([
        click.option("--serial", default="1,100%", show_default=True,
                     help="Batch sizes, canary first: e.g. 1,10%,100% (Ansible serial)."),
        click.option("--max-fail", default=0.0, show_default=True,
                     type=click.FloatRange(0, 100),
                     help="Percent of a batch that may fail before the rollout stops "
                     "(Ansible max_fail_percentage: stop when more than this fail; "
                     "unreachable counts)."),
        gate_option,
        click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1),
                     help="Releases kept on each device."),
        click.option("--bwlimit", default=0, show_default=True, type=click.IntRange(min=0),
                     help="rsync bandwidth limit in KiB/s per host (0: none), for thin "
                     "links."),
    ]):
        f = opt(f)
    return f


def _signers(given: Path | None, out_root: Path) -> trust.Signers:
    """The keys releases are checked against: --allowed-signers, else the site's."""
    return trust.signers(given, out_root)


def _open(d: Path, s: trust.Signers, *, say: bool = True) -> trust.Release:
    """A release directory checked (signature, typed manifest, tree), said in one line
    on stderr: which keys it was checked against."""
    r = trust.open_release(d, s)
    if say:
        console.print(f"release {r.release_id}: signature verified with {s.said}")
    return r


def _ssh(cache_dir: Path | None, known_hosts: Path | None, accept_new: bool) -> fleet.Ssh:
    from ..sshkey import builder_key

    key, _ = builder_key(Cache(cache_dir))
    return fleet.Ssh(known_hosts=known_hosts, accept_new=accept_new, key=key)


@app.command("release")
@profile_option
@model_file_option
@model_source_option
@signing_key_option
@out_option
@cache_option
@profiles_dir_option
@json_option
def release_cmd(profile: str, model_file: Path | None, model_source: str | None,
                signing_key: Path | None, out_root: Path, cache_dir: Path | None,
                profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Make a signed release of a profile (engine, gateway, settings, model) in
    OUT/releases/<id>/, ready for `builder deploy`. No root needed."""
    from .. import build as build_mod

    ctx = BuildContext(device=load_device(profile, profiles_dir), cache=Cache(cache_dir),
                       out_root=out_root, model_file=model_file, model_source=model_source,
                       signing_key=signing_key)
    bundle = build_mod.release_only(ctx)
    m = bundle.manifest
    if json_:
        _print_json({"release_id": m["release_id"], "dir": str(bundle.dir),
                     "model_sha256": m["model"]["sha256"], "files": len(m["files"]),
                     "tree_bytes": bundle.tree_bytes, "model_bytes": m["model"]["bytes"]})
        return
    out.print(f"[green]✓[/] release {m['release_id']}: {display_path(bundle.dir)}")
    out.print(f"  {len(m['files'])} files ({format_size(bundle.tree_bytes)}), model "
              f"{m['model']['id']} {m['model']['quant']} ({format_size(m['model']['bytes'])}"
              f", sha256 {m['model']['sha256'][:16]}), signed ({display_path(bundle.tree)}"
              "/release.json.sig)")
    out.print(f"next: builder deploy --inventory FLEET.yml --release {m['release_id']}")


def _table(outcomes: list[fleet.HostOutcome], *, sent: bool) -> Table:
    t = Table("host", "result", "serving", "healthy", *(("sent",) if sent else ()), "reason")
    for o in outcomes:
        color = "green" if o.ok else "red"
        healthy = "-" if o.healthy is None else ("yes" if o.healthy else "[red]no[/]")
        # what a device reported is text, never markup
        row = [escape(o.host), f"[{color}]{escape(o.result)}[/]", escape(o.serving or "-"),
               healthy]
        if sent:
            row.append("-" if o.bytes_sent is None else format_size(o.bytes_sent))
        t.add_row(*row, escape(o.reason or ""))
    return t


def _finish(outcomes: list[fleet.HostOutcome], what: str, json_: bool, *,
            sent: bool = False) -> None:
    if json_:
        _print_json([vars(o) for o in outcomes])
    else:
        out.print(_table(outcomes, sent=sent))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise fleet.FleetFailed(f"{what}: {len(bad)} of {len(outcomes)} host(s) did not "
                                f"succeed: " + ", ".join(f"{o.host} ({o.result})"
                                                         for o in bad))


@app.command("deploy")
@fleet_options
@click.option("--release", "-r", "release_ref",
              help="Release id (in OUT/releases) or its directory.")
@click.option("--bundle", "bundle_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of --release: a bundle file (`builder bundle export`), imported "
              "into OUT/releases first (checked, resumable), then deployed.")
@allowed_signers_option
@rollout_options
def deploy_cmd(inventory: Path, release_ref: str | None, bundle_file: Path | None,
               allowed_signers: Path | None, serial: str, max_fail: float,
               gate_timeout: int, keep: int, bwlimit: int, limit: str | None,
               known_hosts: Path | None, accept_new_host_keys: bool, out_root: Path,
               cache_dir: Path | None, json_: bool) -> None:
    """Roll a release out to a fleet: canary first, then batches; each device verifies
    the signature, switches, and keeps the release only if it passes its health gate."""
    if bool(release_ref) == bool(bundle_file):
        raise BuilderError("say what to deploy: --release ID or --bundle FILE (one of them)")
    batches = fleet.parse_serial(serial)
    doctor.require("fleet")
    d = release_mod.find(out_root / "releases", release_ref).dir if release_ref else None
    signers = _signers(allowed_signers, out_root)
    if bundle_file:
        d = _import(bundle_file, out_root, signers, json_).bundle.dir
    assert d is not None
    r = _open(d, signers, say=not bundle_file)  # an import said it already
    work = fleet.state_dir(out_root, "deploy")
    outcomes = fleet.deploy(inventory, r, _ssh(cache_dir, known_hosts, accept_new_host_keys),
                            work, serial=batches, max_fail=max_fail,
                            gate_timeout=gate_timeout, keep=keep, bwlimit_kbps=bwlimit,
                            limit=limit)
    if not json_:
        out.print(f"release {r.release_id} (record: {display_path(work / 'deploy.json')})")
    _finish(outcomes, f"deploy {r.release_id}", json_, sent=True)


@app.command("rollback")
@fleet_options
@gate_option
def rollback_cmd(inventory: Path, limit: str | None, gate_timeout: int,
                 known_hosts: Path | None, accept_new_host_keys: bool, out_root: Path,
                 cache_dir: Path | None, json_: bool) -> None:
    """Return devices to the last release that passed its gate before the current one."""
    outcomes = fleet.status(inventory, _ssh(cache_dir, known_hosts, accept_new_host_keys),
                            fleet.state_dir(out_root, "rollback"), action="rollback",
                            limit=limit, gate_timeout=gate_timeout)
    _finish(outcomes, "rollback", json_)


@app.group("fleet")
def fleet_group() -> None:
    """Look at a fleet of devices."""


@fleet_group.command("status")
@fleet_options
def fleet_status_cmd(inventory: Path, limit: str | None, known_hosts: Path | None,
                     accept_new_host_keys: bool, out_root: Path, cache_dir: Path | None,
                     json_: bool) -> None:
    """Per host: reachable, release served, model, health, last deploy result."""
    outcomes = fleet.status(inventory, _ssh(cache_dir, known_hosts, accept_new_host_keys),
                            fleet.state_dir(out_root, "status"), limit=limit)
    if json_:
        _print_json([vars(o) for o in outcomes])
    else:
        t = Table("host", "reachable", "release", "last good", "model", "healthy",
                  "last deploy")
        for o in outcomes:
            last = o.last_result or {}
            t.add_row(escape(o.host),
                      "yes" if o.reachable else f"[red]no[/] {escape(o.reason)}",
                      escape(str(o.serving or "-")), escape(str(o.last_good or "-")),
                      escape(str(o.model_sha256 or "-")[:12]),
                      "-" if o.healthy is None else ("yes" if o.healthy else "[red]no[/]"),
                      escape(f"{last.get('result', '-')} {last.get('release', '')} "
                             f"{last.get('at', '')}".strip()))
        out.print(t)
    if any(not o.reachable for o in outcomes):
        raise fleet.FleetFailed("fleet status: unreachable: " + ", ".join(
            o.host for o in outcomes if not o.reachable))


@fleet_group.command("vars")
@click.option("--release", "-r", "release_ref", required=True,
              help="Release id (in OUT/releases) or its directory.")
@rollout_options
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="An existing directory where the playbook writes each host's outcome "
              "(<host>.json) on the machine that runs it; default: none (AWX keeps the "
              "job's events).")
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]), default="json",
              show_default=True,
              help="json for an AWX job template's extra vars; yaml (every string "
              "!unsafe, as `builder deploy` writes them) for `ansible-playbook -e @FILE` "
              "or ansible-runner.")
@allowed_signers_option
@out_option
def fleet_vars_cmd(release_ref: str, serial: str, max_fail: float, gate_timeout: int,
                   keep: int, bwlimit: int, report_dir: Path | None, fmt: str,
                   allowed_signers: Path | None, out_root: Path) -> None:
    """Print playbooks/deploy.yml's extra vars for a release, for running the rollout
    under ansible-runner or an AWX job template (docs/fleet.md). The release's
    signature is checked first, and every value is typed."""
    from ..provision import unsafe_yaml

    batches = fleet.parse_serial(serial)
    d = release_mod.find(out_root / "releases", release_ref).dir
    r = _open(d, _signers(allowed_signers, out_root))
    v = fleet.deploy_vars(r, report_dir, serial=batches, max_fail=max_fail,
                          gate_timeout=gate_timeout, keep=keep, bwlimit_kbps=bwlimit)
    if fmt == "yaml":
        click.echo(unsafe_yaml(v), nl=False)
    else:
        _print_json(v)


# --- bundles: a release carried into a closed site -----------------------------------------

@app.group("bundle")
def bundle_group() -> None:
    """Carry a signed release into a site without a network, as one file."""


@bundle_group.command("export")
@click.option("--release", "-r", "release_ref", required=True,
              help="Release id (in OUT/releases) or its directory.")
@click.option("--output", "-o", "dest", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle file to write (e.g. on a USB disk formatted exFAT or ext4).")
@allowed_signers_option
@out_option
@json_option
def bundle_export_cmd(release_ref: str, dest: Path, allowed_signers: Path | None,
                      out_root: Path, json_: bool) -> None:
    """Write a release (engine, gateway, settings, model, signed manifest) as one file.
    Its signature and tree are checked first."""
    d = release_mod.find(out_root / "releases", release_ref).dir
    e = bundle_mod.export_bundle(_open(d, _signers(allowed_signers, out_root)), dest)
    if json_:
        _print_json({"release_id": e.release_id, "file": str(e.path), "bytes": e.bytes,
                     "model_bytes": e.model_bytes})
        return
    out.print(f"[green]✓[/] release {e.release_id}: {display_path(e.path)} "
              f"({format_size(e.bytes)}, model {format_size(e.model_bytes)})")
    out.print(f"on the closed side: builder bundle import {e.path.name} "
              "--allowed-signers ALLOWED_SIGNERS")


def _import(file: Path, out_root: Path, signers: trust.Signers,
            json_: bool) -> bundle_mod.Imported:
    i = bundle_mod.import_bundle(file, out_root, signers)
    if json_:
        return i
    where = display_path(i.bundle.dir)
    if i.already:
        out.print(f"release {i.bundle.release_id} is already in {where} (signature verified "
                  f"with {escape(signers.said)}, tree and model checked): nothing to do")
    else:
        resumed = f", {format_size(i.resumed)} taken from an earlier attempt" \
            if i.resumed else ""
        out.print(f"[green]✓[/] release {i.bundle.release_id}: signature verified with "
                  f"{escape(signers.said)} and every hash checked, placed in {where} "
                  f"({format_size(i.copied)} read{resumed})")
    return i


@bundle_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@allowed_signers_option
@out_option
@json_option
def bundle_import_cmd(file: Path, allowed_signers: Path | None, out_root: Path,
                      json_: bool) -> None:
    """Check a bundle (signature, then every hash) and place its release in
    OUT/releases/<id>/. An interrupted import resumes; a release already there is left
    as it is."""
    i = _import(file, out_root, _signers(allowed_signers, out_root), json_)
    if json_:
        _print_json({"release_id": i.bundle.release_id, "dir": str(i.bundle.dir),
                     "already": i.already, "copied_bytes": i.copied,
                     "resumed_bytes": i.resumed})
        return
    out.print(f"next: builder deploy --inventory FLEET.yml --release {i.bundle.release_id}")


# --- the lab: a build as a Vagrant box --------------------------------------------------------

@app.command("vagrant-box")
@profile_option
@out_option
@profiles_dir_option
def vagrant_box_cmd(profile: str, out_root: Path, profiles_dir: tuple[Path, ...]) -> None:
    """Pack a profile's built image into a vagrant-libvirt box for the lab's Vagrantfile
    (OUT/<profile>/vagrant-libvirt.box): `vagrant up`, then `builder verify`."""
    from ..lab import vagrant

    d = load_device(profile, profiles_dir)
    rp = d.source
    build_dir = out_root / rp.name
    if not (build_dir / "manifest.json").is_file():
        raise BuilderError(f"{display_path(build_dir / 'manifest.json')}: no build of "
                           f"{rp.name} here; run `sudo builder build --profile {rp.name}` "
                           "first")
    doctor.require("vm")
    logs = out_root / ".logs" / rp.name
    logs.mkdir(parents=True, exist_ok=True)
    dest = build_dir / vagrant.BOX_FILE
    box = vagrant.pack(build_dir, d.target, dest, log_file=logs / "vagrant-box.log")
    out.print(f"[green]✓[/] {display_path(dest)} ({format_size(dest.stat().st_size)}; disk "
              f"{format_size(box.virtual_size)}), {display_path(build_dir / vagrant.VARS_FILE)}")
    out.print(f"next: {vagrant.add_command(rp.name, dest)}  (first time: `vagrant up` adds it)")
