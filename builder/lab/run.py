"""`builder lab run`: hardware in the loop over a lab of devices.

For each device of a lab inventory (lab/inventory.py, docs/lab.md): put the build of its
profile on it - written by its SD/USB writer or over its Jetson recovery USB (the
target's own `flash`, as `builder flash` does it), or deployed as a release with Ansible
(fleet.deploy) - wait until it answers, run the verify suite on it (builder/verify) and a
short benchmark through its public port (measure.py), and hold the numbers to its
profile's verify.* thresholds. Devices that share a writer (the same block device, or
the controller's recovery USB) run one after another, in a lane; lanes run side by side.

Everything a run learns is in its directory: the inventory as run, one JSON record per
device (written after every step), the verify suite's JUnit and log per device, and the
reports (report.py). Run again over the same directory, a device starts at its first
step that did not pass; the steps before it are kept.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from .. import resolve
from .. import verify as verify_mod
from ..cache import Cache
from ..contracts import Device
from ..errors import BuilderError, display_path
from ..fleet import deploy as fleet
from ..fleet import release as release_mod
from ..fleet import trust
from ..profiles import ProfileStore
from ..run import run
from ..schema import Profile
from ..units import format_size
from . import bench, measure
from .inventory import DEPLOY_ONLY, FLASH_METHODS, LabDevice, lanes

RECORD_FORMAT = 1


class LabFailed(BuilderError):
    """Some devices did not pass every step (exit 1, not a usage error)."""

    exit_code = 1


class StepFailed(Exception):
    """A step ran and did not pass; the message says why (one line)."""


# --- what each device gets: its profile, build and release --------------------------------

@dataclass
class Plan:
    device: LabDevice
    resolved: Device  # what its profile describes (target, engine, plan)
    manifest_path: Path
    manifest: dict[str, Any]
    release: trust.Release  # checked against the site's signers

    @property
    def p(self) -> Profile:
        return self.resolved.profile

    @property
    def name(self) -> str:
        """Its profile's name."""
        return self.resolved.name

    @property
    def ssh_host(self) -> verify_mod.SshHost:
        return verify_mod.SshHost(self.user, self.device.host, self.device.port)

    @property
    def thresholds(self) -> dict[str, Any]:
        return bench.thresholds(self.p, self.manifest)

    @property
    def user(self) -> str:
        return self.device.user or self.p.os.admin_user

    @property
    def model(self) -> str:
        """The model the device serves, as its release names it (a file given to the
        build is named by the file)."""
        m = self.release.manifest.model
        return f"{m.id} {m.quant}"

    @property
    def api_url(self) -> str:
        return verify_mod.api_url_of(self.ssh_host, self.p.service, self.device.api_url)


def plan(devices: list[LabDevice], store: ProfileStore, out_root: Path) -> list[Plan]:
    """Each device's profile, the build of it in OUT and that build's release; one line
    naming the device when any is missing or does not fit how the device is flashed."""
    profiles = []
    for d in devices:  # every profile first: a typo is reported before a missing build
        try:
            rp = store.load(d.profile)
            profiles.append((d, resolve.resolve(rp, rp.concrete("test in the lab"))))
        except BuilderError as e:
            raise BuilderError(f"{d.profile_where}: devices.{d.name}.profile: {e}") from None
    plans = []
    signers: trust.Signers | None = None
    for d, resolved in profiles:
        rp = resolved.source
        mpath = out_root / rp.name / "manifest.json"
        if not mpath.is_file():
            raise BuilderError(f"{d.where}: devices.{d.name}: no build of {rp.name} "
                               f"({display_path(mpath)} is missing); run `builder build "
                               f"--profile {d.profile}` first (or pass --out)")
        m = json.loads(mpath.read_text())
        kind = (m.get("delivery") or {}).get("kind")
        method = FLASH_METHODS.get(d.flash)
        if method and (kind != method.writes or method not in resolved.target.flash_methods):
            fits = next((f.name for f in resolved.target.flash_methods if f.writes == kind),
                        None)
            raise BuilderError(f"{d.where}: devices.{d.name}.flash: {d.flash} writes a "
                               f"{method.writes}, and the {rp.name} build delivers "
                               f"{kind or 'nothing to write'}; use flash: "
                               f"{fits or DEPLOY_ONLY}")
        try:
            d_release = release_mod.find(out_root / "releases", m["release_id"]).dir
        except BuilderError:
            raise BuilderError(f"{d.where}: devices.{d.name}: the {rp.name} build's release "
                               f"{m['release_id']} is not in "
                               f"{display_path(out_root / 'releases')}; build again") from None
        signers = signers or trust.signers(None, out_root)
        plans.append(Plan(d, resolved, mpath, m, trust.open_release(d_release, signers)))
    return plans


# --- records: what each device went through, kept in the run directory ----------------------

def identity(pl: Plan) -> dict[str, Any]:
    """What a record must match to be resumed: the same device, build and way there."""
    d = pl.device
    return {"device": d.name, "profile": pl.name, "target": pl.p.target,
            "flash": d.flash, "writer": d.writer, "host": d.host, "port": d.port,
            "release_id": pl.manifest["release_id"]}


def same_device(record: dict[str, Any] | None, ident: dict[str, Any]) -> bool:
    """Whether a record is of this device, build and way there (identity)."""
    return bool(record) and all(record.get(k) == v for k, v in ident.items())


def resume_from(record: dict[str, Any] | None, ident: dict[str, Any],
                steps: tuple[str, ...]) -> int:
    """Index of the first step to run for a device: 0 without a record or when the
    record is of another build or device; else its first step that did not pass."""
    if not same_device(record, ident):
        return 0
    done = {s["name"]: s for s in record.get("steps", [])}
    for i, name in enumerate(steps):
        if (done.get(name) or {}).get("status") != "passed":
            return i
    return len(steps)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_path(run_dir: Path, name: str) -> Path:
    return run_dir / "devices" / f"{name}.json"


# --- running -----------------------------------------------------------------------------

@dataclass
class Lab:
    """What every device's steps share."""

    run_dir: Path
    key: Path  # the builder's SSH key (a device may name its own)
    ssh: fleet.Ssh  # deploys: known hosts, strictness
    attempt: int = 1
    select: str | None = None  # the verify suite's -k
    requests: int = 5  # the benchmark's timed requests
    max_tokens: int = 32
    gate_timeout: int = 300
    yes: bool = False  # --yes: write every device, whatever its confirm: says
    say: Callable[[str], None] = print
    tune: TuneOptions | None = None  # --tune: a tune step after the benchmark
    cache_dir: Path | None = None  # the artifact cache (verify.min_agreement's reference)

    def steps_of(self, pl: Plan) -> tuple[str, ...]:
        """The device's steps; with --tune, a tune after the benchmark where its engine
        has a benchmark `builder tune` runs (llama.cpp's llama-bench)."""
        tunable = self.tune and pl.resolved.engine.tuner() is not None
        return (*pl.device.steps, "tune") if tunable else pl.device.steps


@dataclass(frozen=True)
class TuneOptions:
    """How `builder lab run --tune` measures each device (`builder tune`'s test); the
    depth by default the profile's typical one."""

    depth: int | None = None
    prompt: int = 512
    gen: int = 32
    reps: int = 2
    tolerance: float = 0.02
    # how the tune reaches the device (a tune.Runner); default: SSH as verify reaches it
    reach: Callable[[Ctx], Any] | None = None


@dataclass
class Ctx:
    """One device's run: its plan, the lab, its record and its directory of logs."""

    plan: Plan
    lab: Lab
    record: dict[str, Any]

    @property
    def dir(self) -> Path:
        """The device's logs; only the user running the lab reads them: a failed verify
        check's report shows its arguments, the device's API key among them."""
        d = self.lab.run_dir / "devices" / self.plan.device.name
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.chmod(0o700)
        return d

    @property
    def key(self) -> Path:
        return Path(self.plan.device.key_file) if self.plan.device.key_file else self.lab.key

    def ssh_config(self) -> Path:
        """An ssh_config for this device (as `builder verify` writes it: a host key of
        its own file; a freshly flashed device has a new one)."""
        state = self.dir / "verify-state"
        state.mkdir(exist_ok=True)
        cfg = state / "ssh_config"
        verify_mod.write_ssh_config(cfg, self.key, state / "known_hosts")
        return cfg

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.lab.run_dir))


Step = Callable[[Ctx], str]


def step_flash(c: Ctx) -> str:
    from ..flash import Request

    d, pl = c.plan.device, c.plan
    if not (d.confirm or c.lab.yes):  # nobody answers a question in a lab run
        raise StepFailed(f"not written: {d.where}: devices.{d.name} has no confirm: true "
                         f"(add it, or run with --yes, to let the lab overwrite "
                         f"{d.overwrites})")
    log = c.dir / "flash.log"
    said: list[str] = []
    where = pl.resolved.target.flash(
        pl.manifest_path.parent, pl.manifest, resolve.built_profile(pl.manifest),
        Request(device=d.writer, yes=True, say=said.append))
    if said:
        log.write_text("\n".join(said) + "\n")
    # a freshly flashed device makes new host keys at its first boot: forget the old one
    (c.dir / "verify-state" / "known_hosts").unlink(missing_ok=True)
    if d.after_flash:
        run(shlex.split(d.after_flash), what=f"after_flash ({d.after_flash})",
            log_file=c.dir / "after-flash.log", timeout=600)
    return f"{pl.name} release {pl.manifest['release_id']} written to {where}"


def ansible_inventory(c: Ctx) -> Path:
    """The device alone as an Ansible inventory (YAML), reached as the lab inventory says."""
    d = c.plan.device
    host = {"ansible_host": d.host, "ansible_port": d.port, "ansible_user": c.plan.user,
            **({"ansible_ssh_private_key_file": str(Path(d.key_file).resolve())}
               if d.key_file else {})}
    path = c.dir / "inventory.yml"
    write_json(path, {"lab": {"hosts": {d.name: host}}})  # JSON is YAML
    return path


def step_deploy(c: Ctx) -> str:
    pl = c.plan
    outcomes = fleet.deploy(ansible_inventory(c), pl.release, c.lab.ssh, c.dir / "deploy",
                            serial=[1], max_fail=0, gate_timeout=c.lab.gate_timeout, keep=3,
                            bwlimit_kbps=0)
    o = next((o for o in outcomes if o.host == pl.device.name), None)
    if o is None:
        raise StepFailed("ansible did not reach it (log: "
                         f"{c.rel(c.dir / 'deploy' / 'ansible.log')})")
    if not o.ok:
        raise StepFailed(f"{o.result}: {o.reason or 'see ' + c.rel(c.dir / 'deploy')}")
    sent = "" if o.bytes_sent is None else f", {format_size(o.bytes_sent)} sent"
    return f"{o.result}: serves {o.serving}{sent}"


def step_ready(c: Ctx) -> str:
    """SSH answers, then the public port's /health: within ready_timeout, plus the time an
    engine built on the device at its first start may take."""
    pl = c.plan
    timeout = pl.device.ready_timeout + fleet.gate_for(pl.release.manifest, 0)
    start = time.monotonic()
    deadline = start + timeout
    cfg = c.ssh_config()
    last = ""
    while True:
        try:
            verify_mod.reachable(pl.ssh_host, cfg)
            break
        except BuilderError as e:
            last = str(e).split(": ", 1)[-1]
        except subprocess.TimeoutExpired:
            last = "ssh did not finish within 60s"
        if time.monotonic() > deadline:
            raise StepFailed(f"no SSH within {timeout}s ({last})")
        time.sleep(5)
    url = pl.api_url + "/health"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10, context=measure.TLS) as r:
                if r.status == 200:
                    break
        except urllib.error.HTTPError as e:
            last = f"{url} answered {e.code}"
        except (OSError, ValueError) as e:
            last = f"{url}: {getattr(e, 'reason', e)}"
        if time.monotonic() > deadline:
            raise StepFailed(f"SSH answers, the public port did not become healthy within "
                             f"{timeout}s ({last})")
        time.sleep(3)
    return f"SSH and {url} answered after {time.monotonic() - start:.0f}s"


def junit_counts(path: Path) -> dict[str, Any]:
    """Tests, failures, errors, skipped and the failing tests' names of a JUnit file."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [tc.get("name", "?") for tc in root.iter("testcase")
                        if tc.find("failure") is not None or tc.find("error") is not None]
    return counts


def step_verify(c: Ctx) -> str:
    pl = c.plan
    junit, log = c.dir / "verify.xml", c.dir / "verify.log"
    thresholds = pl.p.verify.model_dump(mode="json")
    answers = verify_mod.answers_for(pl.resolved, pl.manifest, pl.release,
                                     Cache(c.lab.cache_dir), thresholds, c.lab.say)
    rc = verify_mod.run_suite(pl.manifest_path, pl.ssh_host, c.key, c.dir / "verify-state",
                              junit, pl.api_url, thresholds=thresholds,
                              checks=pl.resolved.target.verify_checks,
                              select=c.lab.select, log_file=log, answers=answers)
    counts = junit_counts(junit)
    c.record["verify"] = {**counts, "junit": c.rel(junit), "log": c.rel(log),
                          "select": c.lab.select}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if rc != 0 or counts["failed"]:
        bad = len(counts["failed"])
        raise StepFailed(f"{bad} of {counts['tests']} checks failed: "
                         f"{', '.join(counts['failed'][:4])}{' ...' if bad > 4 else ''} "
                         f"(log: {c.rel(log)})")
    chosen = f" (selected: -k {c.lab.select!r})" if c.lab.select else ""
    return f"{passed} of {counts['tests']} checks passed{chosen}"


def step_benchmark(c: Ctx) -> str:
    pl = c.plan

    def ssh(command: str, what: str) -> str:
        return run(verify_mod.ssh_command(pl.ssh_host, c.ssh_config(), command),
                   what=f"{what} ({pl.device.name})", timeout=120)

    try:
        record = bench.on_device(pl.manifest, pl.api_url, ssh, requests=c.lab.requests,
                                 max_tokens=c.lab.max_tokens)
    except bench.BenchFailed as e:
        raise StepFailed(str(e)) from None
    checks = bench.compare(record, pl.thresholds)
    c.record["benchmark"] = record
    c.record["checks"] = [vars(x) for x in checks]
    line = ("; ".join(bench.describe(x) for x in checks)
            + f"; TTFT p95 ms {record['ttft_ms_p95']:g}")
    if record["prefill_tps"] is not None:
        line += f"; prefill tok/s {record['prefill_tps']:g}"
    if record["engine_build_seconds"] is not None:
        line += f"; engine built on the device in {record['engine_build_seconds']:g}s"
    bad = [x for x in checks if not x.ok]
    if bad:
        raise StepFailed("under the profile's bar: "
                         + "; ".join(bench.describe(x) for x in bad))
    return line


def ssh_runner(c: Ctx) -> Any:
    """The device over SSH, as the verify suite and the benchmark reach it."""
    from ..tune import Ssh

    pl = c.plan
    return Ssh(f"ssh://{pl.user}@{pl.device.host}:{pl.device.port}",
               lambda remote: verify_mod.ssh_command(pl.ssh_host, c.ssh_config(), remote))


def step_tune(c: Ctx) -> str:
    """`builder tune --host` on the device: its release's engine and model measured (the
    engine stopped meanwhile, started again), the tuned overlay written in the device's
    directory and summed up in its record."""
    from .. import tune

    pl, opts = c.plan, c.lab.tune
    assert opts is not None
    runner = (opts.reach or ssh_runner)(c)
    said: list[str] = []
    bench_on, unit = tune.on_device(pl.resolved, runner, said.append)
    test = tune.Test(depth=opts.depth or tune.typical_depth(pl.resolved),
                     prompt=opts.prompt, gen=opts.gen, reps=opts.reps)
    out = c.dir / "tuned.yaml"
    t = tune.Tune(pl.resolved, bench_on, test, out, tolerance=opts.tolerance,
                  say=said.append)
    try:
        with tune.engine_stopped(runner, unit, said.append):
            overlay = t.run()
    finally:
        (c.dir / "tune.log").write_text("\n".join(said) + "\n")
    meas = overlay["measurements"]
    default, best = meas["default"], meas["tuned"]
    c.record["tune"] = {"overlay": c.rel(out), "runtime": overlay["runtime"],
                        **({tune.WEIGHTS: overlay[tune.WEIGHTS]}
                           if overlay.get(tune.WEIGHTS) else {}),
                        "device": overlay["device"], "test": meas["test"],
                        "default": default, "tuned": best, "seconds": meas["seconds"]}
    won = any(tr["outcome"].startswith("kept") for tr in meas["trials"])
    return (f"{tune.describe(tune.chosen(overlay), {})}"
            + ("" if won else " (the profile's defaults won)")
            + f"; decode at depth {test.depth} {default['decode_tps']:g} -> "
            f"{best['decode_tps']:g} tok/s, prefill {default['prefill_tps']:g} -> "
            f"{best['prefill_tps']:g} tok/s; overlay {c.rel(out)}")


STEPS: dict[str, Step] = {"flash": step_flash, "deploy": step_deploy, "ready": step_ready,
                          "verify": step_verify, "benchmark": step_benchmark,
                          "tune": step_tune}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_device(pl: Plan, lab: Lab, steps: dict[str, Step] = STEPS) -> dict[str, Any]:
    """One device, step by step, from its first step that did not pass in an earlier
    attempt; its record is written after every step."""
    d = pl.device
    path = record_path(lab.run_dir, d.name)
    old = read_json(path)
    ident = identity(pl)
    order = lab.steps_of(pl)
    first = resume_from(old, ident, order)
    kept = {s["name"]: s for s in (old or {}).get("steps", [])} if first else {}
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, **ident, "user": pl.user, "api_url": pl.api_url,
        "model": pl.model,
        "engine": pl.manifest["engine"]["kind"], "thresholds": pl.thresholds,
        "attempts": [*(old.get("attempts", []) if same_device(old, ident) else []),
                     lab.attempt],
        "steps": [kept[n] for n in order[:first]],
        **{k: (old or {}).get(k) for k in ("verify", "benchmark", "checks", "tune")
           if first and k in (old or {}) and _kept_for(k, order[:first])},
    }
    for name in order[:first]:
        lab.say(f"{d.name}: {name}: passed in attempt {kept[name]['attempt']}, kept")
    failed = None
    for name in order[first:]:
        if failed:
            record["steps"].append({"name": name, "status": "not run", "attempt": lab.attempt,
                                    "detail": f"not run: {failed} did not pass"})
            continue
        lab.say(f"{d.name}: {name} ...")
        started, t0 = _now(), time.monotonic()
        c = Ctx(pl, lab, record)
        try:
            detail, status = steps[name](c), "passed"
        except (StepFailed, BuilderError) as e:
            detail, status = str(e), "failed"
        except Exception as e:  # a surprise on one device must not stop the others
            (c.dir / f"{name}-error.log").write_text(traceback.format_exc())
            detail, status = (f"{type(e).__name__}: {e} (traceback: "
                              f"{c.rel(c.dir / f'{name}-error.log')})"), "failed"
        seconds = round(time.monotonic() - t0, 1)
        record["steps"].append({"name": name, "status": status, "attempt": lab.attempt,
                                "started": started, "seconds": seconds, "detail": detail})
        lab.say(f"{d.name}: {name} {status} ({seconds:.0f}s): {detail}")
        if status != "passed":
            failed = name
        write_json(path, {**record, "passed": False})
    record["passed"] = all(s["status"] == "passed" for s in record["steps"])
    write_json(path, record)
    return record


def _kept_for(key: str, kept_steps: tuple[str, ...]) -> bool:
    """A step's results stay with it: verify's counts with verify, the numbers with the
    benchmark."""
    return {"verify": "verify", "benchmark": "benchmark", "checks": "benchmark",
            "tune": "tune"}[key] in kept_steps


def run_lab(plans: list[Plan], lab: Lab,
            steps: dict[str, Step] = STEPS) -> list[dict[str, Any]]:
    """Every device, lanes side by side; the records in inventory order."""
    by_name = {pl.device.name: pl for pl in plans}
    records: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def lane(devices: list[LabDevice]) -> None:
        try:
            for d in devices:
                records[d.name] = run_device(by_name[d.name], lab, steps)
        except BaseException as e:  # raised again by the main thread
            errors.append(e)

    threads = [threading.Thread(target=lane, args=(group,), daemon=True,
                                name=f"lab-{group[0].name}")
               for group in lanes([pl.device for pl in plans])]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if errors:
        raise errors[0]
    return [records[pl.device.name] for pl in plans]


def new_run_dir(out_root: Path) -> Path:
    return out_root / "lab" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def start_run(run_dir: Path, inventory: Path, resume: bool) -> dict[str, Any]:
    """The run directory's run.json, made or continued (attempt + 1); the inventory as
    run is copied beside it."""
    meta = read_json(run_dir / "run.json") if resume else None
    if resume and meta is None:
        raise BuilderError(f"--resume {display_path(run_dir)}: not a lab run directory (no "
                           "run.json); start one with --output DIR")
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = read_json(run_dir / "run.json") or {"run_id": run_dir.name, "attempts": []}
    if inventory.resolve() != (run_dir / "lab.yml").resolve():
        shutil.copyfile(inventory, run_dir / "lab.yml")
    meta["inventory"] = inventory.name
    meta["attempts"] = [*meta.get("attempts", []), {"attempt": len(meta.get("attempts", []))
                                                    + 1, "started": _now()}]
    write_json(run_dir / "run.json", meta)
    return meta


def finish_run(run_dir: Path, meta: dict[str, Any]) -> None:
    meta["attempts"][-1]["finished"] = _now()
    write_json(run_dir / "run.json", meta)


def load_records(run_dir: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The device records of a run directory (those named, in that order; else all)."""
    if names is None:
        return [r for f in sorted((run_dir / "devices").glob("*.json"))
                if (r := read_json(f)) is not None]
    return [r for n in names if (r := read_json(record_path(run_dir, n))) is not None]
