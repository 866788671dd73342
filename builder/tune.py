"""`builder tune`: the runtime settings measured on the device itself, through the engine
it ships, and the fastest written as a tuned overlay (builder/tuned.py) a profile
includes.

The search is a coordinate search from the profile's own settings: one knob at a time
(the engine's tuner says which: threads, flash attention, KV cache type, load mode,
batch sizes), each value measured once and kept when it wins, so its cost grows with
the number of values, not with their product. Every candidate is first re-planned:
a setting the profile's checks refuse, or that leaves the memory plan, is refused in
one line and never run.

The objective (`objective()`) puts decode at the profile's typical depth first: a setting
wins when it decodes more than GAIN faster than the best so far, or decodes as fast
(within GAIN) and prefills more than GAIN faster; never when its decode is below the
defaults' or its prefill more than `tolerance` below the defaults'.

The overlay is written after every measurement (complete: false until the end), so
Ctrl-C keeps what was measured, and a run on the same device, engine and model picks up
the measurements a partial file holds.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from . import resolve
from .contracts import Device, Verdict
from .errors import BuilderError, display_path
from .model.shape import ModelShape, of_arch
from .run import run as run_tool
from .schema import Runtime
from .tuned import FORMAT, TUNED_KEYS
from .tuned import load as load_overlay
from .tuned import write as write_overlay

GAIN = 0.02  # a difference smaller than this is measurement noise, not a win


def objective(depth: int, tolerance: float) -> str:
    return (f"decode tok/s at depth {depth} first (a win is more than {GAIN:.0%} faster); "
            f"at equal decode the faster prefill; never below the defaults' decode, nor "
            f"prefill more than {tolerance:.0%} below the defaults'")


class Runner(Protocol):
    """Runs a command on the device and returns what it printed (a BuilderError when
    it fails)."""

    where: str  # "local" or ssh://user@host:port

    def run(self, argv: list[str], what: str) -> str: ...


@dataclass(frozen=True)
class Bench:
    """What the tune runs on the device: the engine's benchmark tool and the model."""

    runner: Runner
    tool: str  # the tool's path on the device
    model: str  # the model file's path on the device
    model_sha256: str
    engine: str  # the engine build: its cache key (or the release that carries it)
    # the model measured, (id, quant), when it is not the profile's (another model the
    # device serves, a file of another shape): the overlay is then that model's, and a
    # profile of the catalog model refuses it
    other_model: tuple[str, str] | None = None
    # the engine's quantize tool on the device, which makes the model at another weight
    # format for a tuner that tries one (None: the release ships none)
    quantize: str | None = None


def same_shape(shape: ModelShape, model_id: str) -> bool:
    """Whether a model file has the catalog model's architecture (what its speed
    depends on, with the quantization): random weights in its shape count as it."""
    from .model.catalog import get_model

    a, b = shape.arch, get_model(model_id)
    return all(getattr(a, k) == getattr(b, k) for k in ("n_layer", "n_embd", "n_head",
                                                          "n_head_kv", "n_ff", "n_vocab"))


@dataclass(frozen=True)
class Test:
    depth: int  # context tokens before decoding (the profile's typical depth)
    prompt: int  # prompt tokens of the prefill test (its time: the TTFT of such a prompt)
    gen: int  # tokens decoded per repetition
    reps: int

    def to_json(self) -> dict[str, int]:
        return {"depth": self.depth, "prompt_tokens": self.prompt, "gen_tokens": self.gen,
                "repetitions": self.reps}


def typical_depth(d: Device) -> int:
    """The context a reply is decoded after, by default: a quarter of a slot's context
    (2048 tokens of x86-gateway's 8192), at most 2048."""
    return max(256, min(2048, d.profile.runtime.context_length // 4))


# A setting's key for the model's weight format (model.quant), which a tuner may try
# besides the runtime keys
WEIGHTS = "weights"


def settings_of(rt: Runtime, cores: int) -> dict[str, Any]:
    """The tuned keys of `rt`, threads made explicit (all cores when unset)."""
    s = {k: getattr(rt, k) for k in TUNED_KEYS}
    s["threads"] = rt.threads or cores
    return s


def _key(settings: dict[str, Any], prefill_only: bool) -> str:
    return json.dumps({**settings, "prefill_only": prefill_only}, sort_keys=True)


def with_settings(d: Device, settings: dict[str, Any], shape: ModelShape | None) -> Device:
    """`d` with these runtime settings (and weight format), re-planned (for the model
    file's shape, at that format)."""
    p = d.profile
    runtime = {k: v for k, v in settings.items() if k != WEIGHTS}
    update: dict[str, Any] = {"runtime": Runtime.model_validate({**p.runtime.model_dump(),
                                                                  **runtime})}
    quant = settings.get(WEIGHTS)
    if quant:
        update["model"] = p.model.model_copy(update={"quant": quant})
        if shape is not None:
            shape = of_arch(shape.arch, quant, d.engine, origin=shape.origin)
    return resolve.with_model(replace(d, profile=p.model_copy(update=update)), shape)


def refusal(d: Device, settings: dict[str, Any], shape: ModelShape | None,
            default: Verdict) -> str | None:
    """Why these settings may not run on the device (one line), or None: the profile's
    own checks, then the memory plan, which they must not leave (nor make tight when
    the defaults fit)."""
    quant = settings.get(WEIGHTS)
    if quant and d.engine.quant(quant) is None:
        return f"model.quant: {quant!r} is not a {d.profile.engine.kind} quantization"
    try:
        cand = with_settings(d, settings, shape)
    except ValidationError as e:
        return f"not a valid setting: {e.errors()[0]['msg']}"
    for loc, message in resolve.problems(cand.profile):
        return f"{'.'.join(map(str, loc))}: {message}"
    plan = cand.plan
    if plan.verdict is Verdict.NO_FIT:
        return f"does not fit the memory plan: {plan.reason}"
    if plan.verdict is Verdict.TIGHT and default is Verdict.FITS:
        return f"makes the memory plan tight: {plan.reason}"
    return None


def judge(m: dict[str, float], best: dict[str, float], default: dict[str, float],
          tolerance: float) -> tuple[bool, str]:
    """Whether measurement `m` beats `best` by the objective, and why (or why not)."""
    floor = default["prefill_tps"] * (1 - tolerance)
    if m["prefill_tps"] < floor:
        return False, (f"prefill {m['prefill_tps']:.1f} tok/s is below {floor:.1f} (the "
                       f"defaults' less {tolerance:.0%})")
    if m["decode_tps"] < default["decode_tps"]:
        return False, "decodes slower than the defaults"
    if m["decode_tps"] > best["decode_tps"] * (1 + GAIN):
        return True, "decodes faster"
    if (m["decode_tps"] >= best["decode_tps"] * (1 - GAIN)
            and m["prefill_tps"] > best["prefill_tps"] * (1 + GAIN)):
        return True, "decodes as fast, prefills faster"
    return False, "not faster"


def chosen(overlay: dict[str, Any]) -> dict[str, Any]:
    """What an overlay (or a lab record of one) sets: its weight format, if it chose one,
    and its runtime settings."""
    weights = overlay.get(WEIGHTS)
    return {**({WEIGHTS: weights} if weights else {}), **(overlay.get("runtime") or {})}


def describe(settings: dict[str, Any], base: dict[str, Any]) -> str:
    changed = {k: v for k, v in settings.items() if base.get(k) != v}
    return ", ".join(f"{k} {_word(v)}" for k, v in changed.items()) or "the defaults"


def _word(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _rates(m: dict[str, Any]) -> str:
    parts = []
    if "decode_tps" in m:
        parts.append(f"decode {m['decode_tps']:.2f} tok/s")
    parts.append(f"prefill {m['prefill_tps']:.1f} tok/s")
    parts.append(f"TTFT {m['ttft_ms']:.0f} ms")
    return ", ".join(parts)


# --- the device -----------------------------------------------------------------------

# nproc counts the CPUs this process may use, but answers OMP_NUM_THREADS when it is set
FACTS = ("echo '== nproc'; env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; "
         "echo '== lscpu'; LC_ALL=C lscpu 2>/dev/null || true")


def device_facts(runner: Runner) -> dict[str, Any]:
    """The CPU model and logical cores of the device (nproc, lscpu)."""
    text = runner.run(["sh", "-c", FACTS], "reading the device's CPU")
    cores = re.search(r"== nproc\n(\d+)", text)
    model = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    return {"cores": int(cores.group(1)) if cores else None,
            "cpu": model.group(1).strip() if model else None}


# --- the search -----------------------------------------------------------------------

@dataclass
class Tune:
    """One tune: the device, what runs there and how it is measured, the file it
    writes, and everything measured so far."""

    d: Device
    bench: Bench
    test: Test
    out: Path
    shape: ModelShape | None = None  # the model file's shape (None: the catalog's)
    tolerance: float = 0.02
    say: Callable[[str], None] = print

    def __post_init__(self) -> None:
        tuner = self.d.engine.tuner()
        if tuner is None:
            raise BuilderError(f"{self.d.name}: {self.d.profile.engine.kind} has no "
                               "benchmark `builder tune` can run")
        self.tuner = tuner
        self.trials: list[dict[str, Any]] = []
        self.previous: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, BuilderError] = {}
        self.facts: dict[str, Any] = {}
        self.copies: dict[str, str] = {}  # weight format -> the model made at it, on the device
        self.workdir: str | None = None  # where those are, on the device
        self.started = time.monotonic()

    # --- the record ---------------------------------------------------------------
    def measured_on(self) -> dict[str, Any]:
        p = self.d.profile
        return {"host": self.bench.runner.where, "cpu": self.facts.get("cpu"),
                "cores": self.facts.get("cores"), "engine": self.d.engine.version(p),
                "engine_build": self.bench.engine, "model_sha256": self.bench.model_sha256,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def record(self, settings: dict[str, Any], complete: bool) -> dict[str, Any]:
        p = self.d.profile
        base = next((t for t in self.trials if t["outcome"] == "defaults"), None)
        best = next((t for t in self.trials if t.get("best")), base)
        # the format the profile itself names (a profile whose overlay chose another
        # serves that one, and is measured on it): the overlay is written against it,
        # and names the chosen format whenever it is another
        own = getattr(self.d.source, "untuned_quant", None) or p.model.quant
        chosen = settings.get(WEIGHTS) or p.model.quant
        return {
            "format": FORMAT, "profile": self.d.name, "complete": complete,
            "objective": objective(self.test.depth, self.tolerance),
            "model": {"id": (self.bench.other_model or (p.model.id,))[0],
                      "quant": (self.bench.other_model or (None, own))[1],
                      "sha256": self.bench.model_sha256},
            "device": self.measured_on(),
            "runtime": {k: v for k, v in settings.items() if k != WEIGHTS},
            **({WEIGHTS: chosen} if chosen.upper() != own.upper() else {}),
            "measurements": {
                "test": self.test.to_json(),
                "default": base and base["measured"], "tuned": best and best["measured"],
                "seconds": round(time.monotonic() - self.started, 1),
                "trials": [{k: v for k, v in t.items() if k != "best"} for t in self.trials],
            },
        }

    def save(self, settings: dict[str, Any], complete: bool = False) -> None:
        write_overlay(self.out, self.record(settings, complete))

    def resume(self) -> None:
        """Measurements a partial overlay at `out` holds for this same device, engine,
        model and test are taken instead of measured again."""
        if not self.out.is_file():
            return
        try:
            old = load_overlay(self.out)
        except BuilderError:
            return  # not ours to read: it is replaced at the end
        dev, meas = old.data.get("device") or {}, old.data.get("measurements") or {}
        mine = self.measured_on()
        # (the CPU's name when lscpu gave one here: without lscpu it comes from
        # llama-bench's output, read after this)
        keys = ("host", "cores", "engine_build", "model_sha256", *(("cpu",) if mine["cpu"]
                                                                   else ()))
        same = (not old.complete and meas.get("test") == self.test.to_json()
                and all(dev.get(k) == mine[k] for k in keys))
        if not same:
            return
        for t in meas.get("trials") or []:
            measured = t.get("measured") if isinstance(t, dict) else None
            if isinstance(measured, dict) and isinstance(t.get("settings"), dict) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool)
                    for v in measured.values()) and "prefill_tps" in measured:
                self.previous[_key(t["settings"], bool(t.get("prefill_only")))] = t["measured"]
        if self.previous:
            self.say(f"resuming: {len(self.previous)} measurement(s) from "
                     f"{display_path(self.out)}")

    # --- measuring ----------------------------------------------------------------
    def _model(self, quant: str | None) -> str:
        """The model file measured at weight format `quant`: the bench's own, or a copy
        the engine's quantize tool makes from it on the device (once per tune, removed
        at its end by `_clean`)."""
        if not quant:
            return self.bench.model
        if quant in self.copies:
            return self.copies[quant]
        runner, tool = self.bench.runner, self.tuner.QUANTIZE
        if self.bench.quantize is None:
            raise BuilderError(f"{runner.where}: the release ships no {tool} to make the "
                               f"model at {quant}; deploy a release made by this builder")
        if self.workdir is None:
            made = runner.run(["mktemp", "-d", "/var/tmp/builder-tune.XXXXXXXX"],
                              "making a work directory").strip()
            if not re.fullmatch(r"/var/tmp/builder-tune\.[A-Za-z0-9]{8}", made):
                raise BuilderError(f"{runner.where}: mktemp printed {made[:80]!r}, not a "
                                   "directory under /var/tmp")
            self.workdir = made
        argv, out = self.tuner.requantize(self.bench.quantize, self.bench.model,
                                          self.workdir, quant,
                                          self.d.profile.device.cpu_cores)
        self.say(f"      making the model at {quant} from {self.bench.model} ({tool}; its "
                 "speed is measured, its quality is the next build's, made from the source)")
        runner.run(argv, f"{tool} {quant}")
        self.copies[quant] = out
        return out

    def _clean(self) -> None:
        if self.workdir is None:
            return
        try:
            self.bench.runner.run(["rm", "-rf", "--", self.workdir],
                                  f"removing {self.workdir}")
        except BuilderError as e:  # not to hide what ended the tune
            self.say(f"note: {self.workdir} is left on {self.bench.runner.where}: {e}")
        self.workdir = None
        self.copies.clear()

    def _run_bench(self, group: list[dict[str, Any]], prefill_only: bool
                   ) -> list[dict[str, Any]]:
        t = self.test
        rts = [with_settings(self.d, s, self.shape).profile.runtime for s in group]
        what = f"{self.tuner.TOOL} ({'; '.join(describe(s, {}) for s in group)})"
        model = self._model(group[0].get(WEIGHTS))
        outputs = [self.bench.runner.run(argv, what) for argv in self.tuner.commands(
            self.bench.tool, model, rts, threads=self.d.profile.device.cpu_cores,
            prompt=t.prompt, gen=t.gen, depth=t.depth, reps=t.reps,
            prefill_only=prefill_only)]
        found = self.tuner.read(outputs, depth=t.depth, count=len(group))
        need = ("prefill_tps", "ttft_ms") + (() if prefill_only else ("decode_tps",))
        for m in found:
            if any(k not in m for k in need):
                raise BuilderError(f"{self.tuner.TOOL} on {self.bench.runner.where} printed "
                                   f"no {' or '.join(k for k in need if k not in m)} "
                                   "measurement")
            if not self.facts.get("cpu") and m.get("cpu"):
                self.facts["cpu"] = m["cpu"]
        return [{k: round(v, 3) for k, v in m.items() if k != "cpu"} for m in found]

    def measure(self, group: list[dict[str, Any]], prefill_only: bool
                ) -> list[dict[str, Any] | BuilderError]:
        """Each of `group` measured (a file's earlier measurement taken as it is): in one
        benchmark run when the tuner can, each alone when that run fails, so a failure
        is the setting's own."""
        keys = [_key(s, prefill_only) for s in group]
        todo = [s for s, k in zip(group, keys, strict=True) if k not in self.previous]
        if todo:
            # settings of one model file share a run; another weight format is another file
            todo.sort(key=lambda s: str(s.get(WEIGHTS) or ""))
            results: list[Any] = []
            for _, same in itertools.groupby(todo, key=lambda s: s.get(WEIGHTS)):
                results += self._measure_each(list(same), prefill_only)
            for s, r in zip(todo, results, strict=True):
                if not isinstance(r, BuilderError):
                    self.previous[_key(s, prefill_only)] = r
                else:
                    self.previous.pop(_key(s, prefill_only), None)
                    self.failed[_key(s, prefill_only)] = r
        return [self.previous.get(k) or self.failed[k] for k in keys]

    def _measure_each(self, todo: list[dict[str, Any]], prefill_only: bool
                      ) -> list[dict[str, Any] | BuilderError]:
        try:
            return list(self._run_bench(todo, prefill_only))
        except BuilderError as e:
            if len(todo) == 1:
                return [e]
        results: list[dict[str, Any] | BuilderError] = []
        for s in todo:
            try:
                results += self._run_bench([s], prefill_only)
            except BuilderError as e1:
                results.append(e1)
        return results

    def run(self) -> dict[str, Any]:
        """The search; returns the overlay written (complete). A model made at another
        weight format is removed from the device at the end, whatever happens."""
        try:
            return self._search()
        finally:
            self._clean()

    def _search(self) -> dict[str, Any]:
        p, t = self.d.profile, self.test
        self.facts = device_facts(self.bench.runner)
        cores = p.device.cpu_cores
        if self.facts.get("cores") and self.facts["cores"] != cores:
            self.say(f"note: the device has {self.facts['cores']} CPUs, the profile says "
                     f"device.cpu_cores {cores}")
        self.resume()
        defaults = settings_of(p.runtime, cores)
        knobs = self.tuner.knobs(p, self.d.platform)
        total = 1 + sum(len(k.values) for k in knobs)
        self.say(f"tuning {self.d.name} on {self.bench.runner.where}: up to {total} "
                 f"settings ({self.tuner.TOOL}: a {t.prompt}-token prompt; {t.gen} tokens "
                 f"decoded at depth 0 and {t.depth}; {t.reps} repetitions each)")
        self.say(f"objective: {objective(t.depth, self.tolerance)}")
        n = 1
        self.say(f"[{n}/{total}] defaults ({describe(defaults, {})}) ...")
        default = self.measure([defaults], False)[0]
        if isinstance(default, BuilderError):
            raise BuilderError(f"measuring the profile's defaults failed: {default}")
        self.trials.append({"knob": "defaults", "settings": defaults, "measured": default,
                            "outcome": "defaults", "best": True})
        self.say(f"      {_rates(default)}  ({self._elapsed()})")
        best_settings, best = defaults, default
        self.save(best_settings)
        for knob in knobs:
            group = []
            for value in knob.values:
                n += 1
                settings = {**best_settings, **value}
                if settings == best_settings:
                    continue
                label = describe(settings, best_settings)
                why = refusal(self.d, settings, self.shape, self.d.plan.verdict)
                if why:
                    self.say(f"[{n}/{total}] {label}: refused: {why}")
                    self.trials.append({"knob": knob.name, "settings": settings,
                                        "prefill_only": knob.prefill_only,
                                        "outcome": f"refused: {why}"})
                    self.save(best_settings)
                    continue
                self.say(f"[{n}/{total}] {label} ...")
                group.append(settings)
            if not group:
                continue
            base = best_settings
            for settings, m in zip(group, self.measure(group, knob.prefill_only),
                                   strict=True):
                trial: dict[str, Any] = {"knob": knob.name, "settings": settings,
                                         "prefill_only": knob.prefill_only}
                label = describe(settings, base)
                if isinstance(m, BuilderError):
                    self.say(f"      {label}: failed: {m}")
                    self.trials.append({**trial, "outcome": f"failed: {m}"})
                    continue
                if knob.prefill_only:  # decode is the best's: a batch of one either way
                    m = {**m, **{k: best[k] for k in ("decode_tps", "decode_tps_depth0")
                                 if k in best}}
                won, why = judge(m, best, default, self.tolerance)
                self.say(f"      {label}: {_rates(m)}: {'kept' if won else 'not kept'} "
                         f"({why})  ({self._elapsed()})")
                self.trials.append({**trial, "measured": m,
                                    "outcome": f"{'kept' if won else 'not kept'}: {why}",
                                    "best": won})
                if won:
                    for tr in self.trials[:-1]:
                        tr["best"] = False
                    best_settings, best = settings, m
            self.save(best_settings)
        self.save(best_settings, complete=True)
        return self.record(best_settings, True)

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f}s"


def on_device(d: Device, runner: Runner, say: Callable[[str], None]) -> tuple[Bench, str]:
    """What the device's current release carries to measure (its engine's benchmark tool
    and its model, named by its release.json, parsed as untrusted), and its engine unit."""
    from .fleet import trust

    layout = d.layout
    manifest_path = f"{layout.current}/release.json"
    what = f"{runner.where}: {manifest_path}"
    data = runner.run(["cat", manifest_path], f"reading {manifest_path}")
    try:
        m = trust.Manifest.parse(data.encode(), what)
    except trust.Refused as e:
        raise BuilderError(f"{e} (is a release of {d.name} deployed there?)") from None
    tool = d.engine.tuner().TOOL
    if f"bin/{tool}" not in m.files:
        raise BuilderError(f"{what}: release {m.release_id} ships no bin/{tool}; deploy a "
                           "release made by this builder")
    other = None
    if (m.model.id, m.model.quant) != (d.profile.model.id, d.profile.model.quant):
        # a model given to its build (--model-file, --model-source): its own is measured
        other = (m.model.id, m.model.quant)
        say(f"note: the device serves {m.model.id} ({m.model.quant}), not the profile's "
            f"{d.profile.model.id} {d.profile.model.quant}; measuring it (the overlay is "
            "that model's)")
    quantize = getattr(d.engine.tuner(), "QUANTIZE", None)
    return (Bench(runner, f"{layout.current}/bin/{tool}", m.model.path, m.model.sha256,
                  f"{m.engine.cache_key} (release {m.release_id})", other,
                  f"{layout.current}/bin/{quantize}" if f"bin/{quantize}" in m.files
                  else None),
            layout.engine_unit)


@contextmanager
def engine_stopped(runner: Runner, unit: str, say: Callable[[str], None]) -> Iterator[None]:
    """The device's engine stopped while it is measured (its memory and CPU are the
    benchmark's), started again afterwards, whatever happens."""
    say(f"stopping {unit} on {runner.where} while it is measured (the public port "
        "answers 503 meanwhile)")
    runner.run(["sudo", "-n", "systemctl", "stop", unit], f"stopping {unit}")
    try:
        yield
    finally:
        say(f"starting {unit} again")
        runner.run(["sudo", "-n", "systemctl", "start", unit], f"starting {unit}")


RUN_TIMEOUT = 3600  # one benchmark run on the slowest device (a depth fill included)


@dataclass(frozen=True)
class Local:
    """This machine is the device (`--local`)."""

    where: str = "local"

    def run(self, argv: list[str], what: str) -> str:
        return run_tool(argv, what=what, timeout=RUN_TIMEOUT)


@dataclass(frozen=True)
class Ssh:
    """A device over SSH, the way `builder bench` and `builder verify` reach one (the
    builder's key, an ssh_config of the verify helpers): one command at a time."""

    where: str
    command: Callable[[str], list[str]]  # a remote command line -> the ssh argv

    def run(self, argv: list[str], what: str) -> str:
        # the remote side ends the benchmark itself if this side goes away (Ctrl-C)
        remote = shlex.join(["timeout", str(RUN_TIMEOUT), *argv])
        return run_tool(self.command(remote), what=f"{what} on {self.where}",
                        timeout=RUN_TIMEOUT + 60)
