"""`builder tune`: the runtime settings measured on the device and the fastest written as
a tuned overlay (builder/tune.py)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..cache import Cache
from ..errors import BuilderError, display_path
from .common import (
    app,
    cache_option,
    load_device,
    model_file_option,
    out,
    out_option,
    profile_option,
    profiles_dir_option,
)


@app.command("tune")
@profile_option
@click.option("--local", is_flag=True, help="This machine is the device (an x86 gateway): "
              "the profile's engine built here, its model made here.")
@click.option("--host", "host_url", help="ssh://user@host:port of a device serving a "
              "release of the profile: its own engine and model are measured (its engine "
              "unit is stopped meanwhile and started again).")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="The tuned overlay to write [default: tuned/<profile>.yaml].")
@click.option("--depth", type=click.IntRange(min=1), help="Context tokens before the "
              "decode that is optimised [default: a quarter of runtime.context_length, at "
              "most 2048].")
@click.option("--prompt", default=512, show_default=True, type=click.IntRange(min=16),
              help="Prompt tokens of the prefill test (its time is the TTFT reported).")
@click.option("--gen", default=32, show_default=True, type=click.IntRange(min=4),
              help="Tokens decoded per repetition.")
@click.option("--repetitions", "-r", default=2, show_default=True,
              type=click.IntRange(min=1), help="Repetitions of each test (averaged).")
@click.option("--prefill-tolerance", default=2.0, show_default=True,
              type=click.FloatRange(min=0, max=50), help="Percent a winner's prefill may "
              "be below the defaults' (decode at depth comes first).")
@click.option("--synthetic", is_flag=True, help="--local: random weights in the exact shape "
              "of the profile's model (no download; the speed of the real one).")
@model_file_option
@out_option
@cache_option
@profiles_dir_option
def tune_cmd(profile: str, local: bool, host_url: str | None, output: Path | None,
             depth: int | None, prompt: int, gen: int, repetitions: int,
             prefill_tolerance: float, synthetic: bool, model_file: Path | None,
             out_root: Path, cache_dir: Path | None, profiles_dir: tuple[Path, ...]) -> None:
    """Measure the engine's runtime settings on the device and write the fastest as a
    tuned overlay the profile includes (`tuned: FILE`).

    A coordinate search from the profile's settings, one knob at a time: on ARM the
    weight format first (among the catalog's of the profile's size: Q4_K_M and Q4_0,
    measured on a copy llama-quantize makes on the device), then threads, flash
    attention, KV cache type, load mode (mmap or not), physical batch. Every
    candidate is re-planned first; one that the profile's checks refuse or that leaves
    the memory plan is refused and not run. Objective: decode tok/s at the typical depth
    first (a win is more than 2% faster); at equal decode the faster prefill; never a
    decode below the defaults' nor a prefill more than --prefill-tolerance below them.

    Progress is printed per measurement; the overlay is written after each one, so
    Ctrl-C keeps what was measured (complete: false) and a re-run resumes from it.
    """
    from .. import tune

    if local == bool(host_url):
        raise BuilderError("say where: --local (this machine is the device) or --host "
                           "ssh://user@host:port")
    if host_url and (synthetic or model_file):
        raise BuilderError("--synthetic and --model-file make a model here: use them with "
                           "--local (--host measures the model the device serves)")
    d = load_device(profile, profiles_dir, "tune")
    cache = Cache(cache_dir)
    if d.engine.tuner() is None:
        raise BuilderError(f"{d.name}: {d.profile.engine.kind} has no benchmark "
                           "`builder tune` can run")
    output = output or Path("tuned") / f"{d.name}.yaml"
    if output.exists() and not output.is_file():
        raise BuilderError(f"--output {display_path(output)}: not a file")
    test = tune.Test(depth=depth or tune.typical_depth(d), prompt=prompt, gen=gen,
                     reps=repetitions)
    if local:
        bench, shape = _local(d, cache, synthetic, model_file)
        d = _replanned(d, shape)
        t = tune.Tune(d, bench, test, output, shape=shape,
                      tolerance=prefill_tolerance / 100, say=out.print)
        record = _run(t)
    else:
        assert host_url is not None
        bench, unit = _remote(d, cache, host_url, out_root)
        t = tune.Tune(d, bench, test, output, tolerance=prefill_tolerance / 100,
                      say=out.print)
        with tune.engine_stopped(bench.runner, unit, out.print):
            record = _run(t)
    _report(record, output, d.name)


def _run(t) -> dict:
    try:
        return t.run()
    except KeyboardInterrupt:
        if t.trials:
            out.print(f"interrupted: {len(t.trials)} setting(s) recorded in "
                      f"{display_path(t.out)} (complete: false); run the same command "
                      "again to resume")
        raise


def _replanned(d, shape):
    from .. import resolve
    from ..contracts import Verdict

    d = resolve.with_model(d, shape)
    if d.plan.verdict is Verdict.NO_FIT:
        raise BuilderError(f"{d.name}: the profile's own settings do not fit the memory "
                           f"plan ({d.plan.reason}); `builder plan --profile {d.name}`")
    return d


def _local(d, cache: Cache, synthetic: bool, model_file: Path | None):
    """The profile's engine built here (or from the cache) and its model made here."""
    from .. import doctor as doctor_mod
    from ..model import pipeline as model_pipeline
    from ..model import synth
    from ..tune import Bench, Local, same_shape

    if synthetic and model_file:
        raise BuilderError("give --synthetic or --model-file, not both")
    p = d.profile
    doctor_mod.require(*d.target.host_stages(p))
    art = d.engine.build(p, d.platform, cache, base_dir=d.engine_base_dir)
    if art is None:
        raise BuilderError(f"{d.name}: its engine is built on the device; tune it there "
                           f"with --host")
    tool = art.tool(d.engine.tuner().TOOL)
    if not tool.is_file():
        raise BuilderError(f"{display_path(tool)}: the engine build has no "
                           f"{tool.name}; rebuild it with `builder engine build`")
    if synthetic:
        model_file = synth.cached(p.model.id, cache).out
    fetched = model_pipeline.fetch(p.model.source, cache, model_file=model_file,
                                   base_dir=d.source.dir_of("model", "source", "path"))
    model = d.engine.model(p, fetched, cache, source_base=d.engine_base_dir)
    shape = d.engine.shape_of(model.path, model.quant)
    other = None
    if not same_shape(shape, p.model.id):
        other = (model.path.name if model_file is None else model_file.name, model.quant)
        out.print(f"note: {other[0]} is not {p.model.id} in shape; measuring it (the "
                  "overlay is that file's, which a profile of the catalog model refuses)")
    name = getattr(d.engine.tuner(), "QUANTIZE", None)  # a tuner that tries weight formats
    quantize = art.tool(name) if name else None
    return Bench(Local(), str(tool), str(model.path), model.sha256, art.entry.key, other,
                 str(quantize) if quantize and quantize.is_file() else None), shape


def _remote(d, cache: Cache, host_url: str, out_root: Path):
    """The device reached over SSH as `builder bench` reaches it: what its current
    release carries, and its engine unit."""
    from .. import verify
    from ..sshkey import builder_key
    from ..tune import Ssh, on_device

    target = verify.parse_host(host_url, d.profile.os.admin_user)
    key, _ = builder_key(cache)
    ssh_config = verify.ssh_to(target, key, out_root / f".verify-{d.name}")
    runner = Ssh(target.url, lambda remote: verify.ssh_command(target, ssh_config, remote))
    return on_device(d, runner, out.print)


def _report(record: dict, output: Path, name: str) -> None:
    from .. import tune
    from ..lab.bench import tuned_side_by_side

    title, rows = tuned_side_by_side(record)
    t = Table("", "defaults", "tuned", "tuned / defaults",
              title=f"{name}: {title} ({record['measurements']['seconds']:.0f}s)")
    for row in rows:
        t.add_row(*row)
    out.print(t)
    won = any(tr["outcome"].startswith("kept") for tr in record["measurements"]["trials"])
    out.print(f"tuned: {tune.describe(tune.chosen(record), {})}"
              + ("" if won else " (the profile's defaults won)"))
    out.print(f"written: {display_path(output)}; a profile includes it with `tuned: PATH` "
              f"(relative to the profile file; a profile of your own may `extends: {name}`), "
              "and its next release carries it")
