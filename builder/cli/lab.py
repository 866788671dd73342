"""`builder lab run`: flash or deploy, wait, verify and benchmark every device of a lab
inventory; JUnit, a JSON record per device and a report (docs/lab.md)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import doctor
from ..cache import Cache
from ..errors import BuilderError, display_path
from ..fleet import deploy as fleet
from ..lab import inventory as lab_inventory
from ..lab import report as lab_report
from ..lab import run as lab
from ..log import console
from ..profiles import ProfileStore
from .common import app, cache_option, out, out_option, profiles_dir_option


@app.group("lab")
def lab_group() -> None:
    """Hardware in the loop: the builds of this checkout on a lab's devices, checked."""


@lab_group.command("run")
@click.option("--inventory", "-i", type=click.Path(dir_okay=False, path_type=Path),
              help="The lab inventory (YAML: devices with profile, flash, ansible_host, ...; "
              "docs/lab.md). With --resume: default the one that run used.")
@click.option("--output", "-o", "output", type=click.Path(file_okay=False, path_type=Path),
              help="The run directory (default OUT/lab/<time>); one that holds a run "
              "resumes it.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this directory: steps that passed are kept, the "
              "first step that did not pass and those after it run again.")
@click.option("--select", metavar="EXPR",
              help="Only the verify checks matching this pytest -k expression (as "
              "`builder verify --select`).")
@click.option("--requests", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed requests of each device's benchmark (after one to warm up).")
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(min=2),
              help="Tokens asked for by each benchmark request.")
@click.option("--gate-timeout", default=300, show_default=True, type=click.IntRange(min=5),
              help="Seconds a deployed release has to pass its health gate on a device.")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts for deploys (default: ~/.ssh/known_hosts).")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Deploys record the host key of a device seen for the first time.")
@click.option("--tune", is_flag=True,
              help="After the benchmark, `builder tune` each device through its release "
              "(its engine stopped meanwhile): the tuned overlay per device in the run "
              "directory and in the report.")
@click.option("--yes", is_flag=True,
              help="Write every sd and jetson-recovery device, also those whose inventory "
              "entry does not say confirm: true.")
@out_option
@cache_option
@profiles_dir_option
def lab_run_cmd(inventory: Path | None, output: Path | None, resume: Path | None,
                select: str | None, requests: int, max_tokens: int, gate_timeout: int,
                known_hosts: Path | None, accept_new_host_keys: bool, tune: bool,
                yes: bool, out_root: Path, cache_dir: Path | None,
                profiles_dir: tuple[Path, ...]) -> None:
    """For each device of a lab inventory: flash it (SD/USB writer, Jetson recovery USB)
    or deploy the release of its profile's build, wait until it answers, run `builder
    verify` and a short benchmark, and hold it to the profile's thresholds. Devices that
    share a writer run one after another, the others side by side. A device is written
    only when its entry says confirm: true (or with --yes). Exit 0 when every device
    passed every step, 1 when some did not, 2 for bad input."""
    from ..sshkey import builder_key

    if resume and output:
        raise BuilderError("--resume DIR continues a run in DIR and --output DIR names it: "
                           "give one of them")
    run_dir = resume or output or lab.new_run_dir(out_root)
    resuming = bool(resume) or (run_dir / "run.json").is_file()
    if inventory is None:
        if not resume:
            raise BuilderError("say which lab: --inventory lab.yml (or --resume DIR to "
                               "continue a run)")
        inventory = run_dir / "lab.yml"
        if not (run_dir / "run.json").is_file():
            raise BuilderError(f"--resume {display_path(run_dir)}: not a lab run directory "
                               "(no run.json); start one with --output DIR")
    devices = lab_inventory.parse_inventory(inventory)
    lab_inventory.require_confirmed(devices, yes)
    plans = lab.plan(devices, ProfileStore(list(profiles_dir)), out_root)
    if any(d.flash == lab_inventory.DEPLOY_ONLY for d in devices):
        doctor.require("fleet")
    meta = lab.start_run(run_dir, inventory, resume=bool(resume))
    key, _ = builder_key(Cache(cache_dir))
    state = lab.Lab(run_dir=run_dir, key=key,
                    ssh=fleet.Ssh(known_hosts=known_hosts, accept_new=accept_new_host_keys,
                                  key=key),
                    attempt=len(meta["attempts"]), select=select, requests=requests,
                    max_tokens=max_tokens, gate_timeout=gate_timeout, yes=yes,
                    tune=lab.TuneOptions() if tune else None, cache_dir=cache_dir,
                    say=lambda line: console.print(line, markup=False, highlight=False))
    if tune:
        for pl in plans:
            if "tune" not in state.steps_of(pl):
                console.print(f"note: {pl.device.name}: not tuned: {pl.p.engine.kind} has no "
                              "benchmark `builder tune` runs", markup=False)
    lanes = lab_inventory.lanes(devices)
    console.print(f"lab run {display_path(run_dir)}{' (resumed)' if resuming else ''}: "
                  f"{len(devices)} device(s) in {len(lanes)} lane(s)"
                  + "".join(f"; one after another: {', '.join(d.name for d in lane)}"
                            for lane in lanes if len(lane) > 1), markup=False)
    try:
        records = lab.run_lab(plans, state)
    finally:
        lab.finish_run(run_dir, meta)
        done = lab.load_records(run_dir, [d.name for d in devices])
        paths = lab_report.write(run_dir, meta, done)
    t = Table("device", "profile", "reached by", "flash / deploy", "ready", "verify",
              "benchmark", *(("tune",) if tune else ()))
    attempt = len(meta["attempts"])
    for r in records:
        cells = []
        for s in r["steps"]:
            color = {"passed": "green", "failed": "red"}.get(s["status"], "dim")
            cells.append(f"[{color}]{lab_report.step_cell(s, attempt)}[/]")
        t.add_row(r["device"], r["profile"], r["flash"], *cells)
    out.print(t)
    out.print("reports: " + ", ".join(display_path(p) for p in paths)
              + f"; records: {display_path(run_dir / 'devices')}")
    bad = [r for r in records if not r.get("passed")]
    if bad:
        raise lab.LabFailed(
            f"lab run: {len(bad)} of {len(records)} device(s) did not pass: "
            + "; ".join(f"{r['device']}: {_first_failure(r)}" for r in bad)
            + f"; fix and re-run with --resume {display_path(run_dir)}")


def _first_failure(record: dict) -> str:
    s = next((s for s in record["steps"] if s["status"] == "failed"), None)
    return f"{s['name']} failed" if s else "not passed"


@lab_group.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def lab_report_cmd(run_dir: Path) -> None:
    """Write the reports of a lab run directory again from its records (junit.xml,
    report.md, report.html), e.g. after copying records out of several runs."""
    meta = lab.read_json(run_dir / "run.json")
    records = lab.load_records(run_dir)
    if meta is None or not records:
        raise BuilderError(f"{display_path(run_dir)}: not a lab run directory (needs "
                           "run.json and devices/*.json)")
    paths = lab_report.write(run_dir, meta, records)
    out.print("reports: " + ", ".join(display_path(p) for p in paths))
