"""`builder release`, `builder deploy`, `builder rollback`, `builder fleet status`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from . import doctor, fleet
from . import release as release_mod
from .cache import Cache
from .cli_common import (
    app,
    cache_option,
    json_option,
    model_file_option,
    model_source_option,
    out,
    out_option,
    profile_option,
    profiles_dir_option,
)
from .cli_common import load_profile as _load
from .cli_common import print_json as _print_json
from .errors import display_path
from .units import format_size

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


gate_option = click.option("--gate-timeout", default=300, show_default=True,
                           type=click.IntRange(min=5),
                           help="Seconds a release has to pass its health gate on a device.")


def _ssh(cache_dir: Path | None, known_hosts: Path | None, accept_new: bool) -> fleet.Ssh:
    from .sshkey import builder_key

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
    from . import build as build_mod

    rp, _ = _load(profile, profiles_dir)
    ctx = build_mod.BuildContext(rp=rp, cache=Cache(cache_dir), out_root=out_root,
                                 model_file=model_file, model_source=model_source,
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
        row = [o.host, f"[{color}]{o.result}[/]", o.serving or "-", healthy]
        if sent:
            row.append("-" if o.bytes_sent is None else format_size(o.bytes_sent))
        t.add_row(*row, o.reason or "")
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
@click.option("--release", "-r", "release_ref", required=True,
              help="Release id (in OUT/releases) or its directory.")
@click.option("--serial", default="1,100%", show_default=True,
              help="Batch sizes, canary first: e.g. 1,10%,100% (Ansible serial).")
@click.option("--max-fail", default=0.0, show_default=True, type=click.FloatRange(0, 100),
              help="Percent of a batch that may fail before the rollout stops (Ansible "
              "max_fail_percentage: stop when more than this fail; unreachable counts).")
@gate_option
@click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1),
              help="Releases kept on each device.")
@click.option("--bwlimit", default=0, show_default=True, type=click.IntRange(min=0),
              help="rsync bandwidth limit in KiB/s per host (0: none), for thin links.")
def deploy_cmd(inventory: Path, release_ref: str, serial: str, max_fail: float,
               gate_timeout: int, keep: int, bwlimit: int, limit: str | None,
               known_hosts: Path | None, accept_new_host_keys: bool, out_root: Path,
               cache_dir: Path | None, json_: bool) -> None:
    """Roll a release out to a fleet: canary first, then batches; each device verifies
    the signature, switches, and keeps the release only if it passes its health gate."""
    batches = fleet.parse_serial(serial)
    doctor.require("fleet")
    bundle = release_mod.find(out_root / "releases", release_ref)
    work = fleet.state_dir(out_root, "deploy")
    outcomes = fleet.deploy(inventory, bundle, _ssh(cache_dir, known_hosts,
                                                    accept_new_host_keys), work,
                            serial=batches, max_fail=max_fail, gate_timeout=gate_timeout,
                            keep=keep, bwlimit_kbps=bwlimit, limit=limit)
    if not json_:
        out.print(f"release {bundle.release_id} (record: {display_path(work / 'deploy.json')})")
    _finish(outcomes, f"deploy {bundle.release_id}", json_, sent=True)


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
            t.add_row(o.host, "yes" if o.reachable else f"[red]no[/] {o.reason}",
                      o.serving or "-", o.last_good or "-",
                      (o.model_sha256 or "-")[:12],
                      "-" if o.healthy is None else ("yes" if o.healthy else "[red]no[/]"),
                      f"{last.get('result', '-')} {last.get('release', '')} "
                      f"{last.get('at', '')}".strip())
        out.print(t)
    if any(not o.reachable for o in outcomes):
        raise fleet.FleetFailed("fleet status: unreachable: " + ", ".join(
            o.host for o in outcomes if not o.reachable))
