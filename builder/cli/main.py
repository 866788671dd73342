"""The `builder` command line. Errors become one line on stderr and an exit status.

click rather than typer: typer 0.29 vendors click privately and boxes usage errors
over several lines; click gives us one stable exception type to turn into one line.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.markup import escape
from rich.table import Table

from .. import plugins, resolve
from ..contracts import Plan, Verdict
from ..errors import EXIT_ERROR, BuilderError, display_path
from ..model import catalog
from ..profiles import ProfileStore, with_overrides
from ..schema import Profile
from ..units import format_size
from .common import (
    app,
    cache_option,
    json_option,
    model_file_option,
    model_source_option,
    out,
    profiles_dir_option,
)
from .common import print_json as _print_json

if TYPE_CHECKING:
    from ..cache import Cache
    from ..contracts import PlanInput


@app.group("profiles")
def profiles_app() -> None:
    """List, show and validate device profiles."""


@app.group("models")
def models_app() -> None:
    """The model catalog."""


# --- profiles -------------------------------------------------------------------------

@profiles_app.command("list")
@profiles_dir_option
@json_option
@click.option("--all", "all_", is_flag=True, help="Include abstract bases.")
def profiles_list(profiles_dir: tuple[Path, ...], json_: bool, all_: bool) -> None:
    """List the profiles on the search path."""
    store = ProfileStore(list(profiles_dir))
    rows = []
    for name in store.names(include_abstract=all_):
        rp = store.load(name)
        p = rp.profile
        rows.append({
            "name": name, "path": display_path(rp.path), "abstract": rp.abstract,
            "description": rp.data.get("description", ""),
            "target": p.target if p else None,
            "ram": format_size(p.device.ram) if p else None,
            "engine": p.engine.kind if p else None,
            "model": p.model.id if p else None, "quant": p.model.quant if p else None,
        })
    if json_:
        return _print_json(rows)
    table = Table("profile", "target", "RAM", "engine", "model")
    for r in rows:
        model = f"{r['model'].removesuffix('-instruct')} {r['quant']}" if r["model"] else "-"
        table.add_row(r["name"] + (" (base)" if r["abstract"] else ""), r["target"] or "-",
                      r["ram"] or "-", r["engine"] or "-", model)
    out.print(table)
    out.print(f"searched: {', '.join(display_path(d) for d in store.dirs)}")


@profiles_app.command("show")
@click.argument("profile")
@profiles_dir_option
@json_option
def profiles_show(profile: str, profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Print the fully resolved PROFILE (name or YAML path), after extends and defaults."""
    rp = ProfileStore(list(profiles_dir)).load(profile)
    if rp.profile is None:
        data: dict[str, Any] = dict(rp.data)
    else:
        data = rp.profile.model_dump(mode="json", exclude={"extends", "abstract"})
    if json_:
        return _print_json({"name": rp.name, "chain": [display_path(p) for p in rp.chain],
                            "profile": data})
    sys.stdout.write(f"# {rp.name}: resolved from "
                     f"{' -> '.join(display_path(p) for p in rp.chain)}\n")
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@profiles_app.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@profiles_dir_option
def profiles_validate(files: tuple[Path, ...], profiles_dir: tuple[Path, ...]) -> None:
    """Check profile FILES; a problem is reported as FILE:LINE:COL: field: why."""
    store = ProfileStore(list(profiles_dir))
    for f in files:
        rp = store.resolve_file(f)
        what = "abstract base" if rp.profile is None else (
            f"{rp.profile.target}, {rp.profile.model.id} {rp.profile.model.quant}")
        out.print(f"[green]ok[/] {display_path(f)} ({what})")


@profiles_app.command("schema")
@click.option("--markdown", is_flag=True,
              help="Field reference as Markdown (docs/profile-reference.md).")
def profiles_schema(markdown: bool) -> None:
    """JSON Schema of a profile, for editor completion (yaml-language-server)."""
    from ..schema_doc import markdown_reference

    if markdown:
        sys.stdout.write(markdown_reference())
    else:
        _print_json({"title": "edge-llm builder device profile",
                     **plugins.PROFILE.json_schema()})


# --- models ---------------------------------------------------------------------------

@models_app.command("list")
@cache_option
@json_option
def models_list(cache_dir: Path | None, json_: bool) -> None:
    """The catalog: architecture numbers, weight size per quantization, and the quality
    of each quantization measured on this machine (`builder model quality`)."""
    from ..cache import Cache
    from ..model import quality

    measured = quality.measured(Cache(cache_dir))
    rows = []
    for m in catalog.MODELS.values():
        rows.append({
            "id": m.id, "hf_repo": m.hf_repo, "params": m.n_params,
            "published_params": m.published_params, "layers": m.n_layer,
            "hidden": m.n_embd, "heads": m.n_head, "kv_heads": m.n_head_kv,
            "head_dim": m.head_dim, "ffn": m.n_ff, "vocab": m.n_vocab,
            "tied_embeddings": m.tied_embeddings, "max_context": m.max_context,
            # by engine: engines share names (int4_awq) for layouts of different sizes
            "quants": {e.kind: {q.name: {"weight_bytes": e.weight_bytes(m, q.name),
                                         "bits_per_weight": round(e.weight_bytes(m, q.name)
                                                                  * 8 / m.n_params, 3)}
                                for q in e.quants}
                       for e in plugins.ENGINES.values()},
            "quality": [{k: r[k] for k in QUALITY_KEYS if k in r}
                        for r in measured if r["model"] == m.id],
        })
    if json_:
        return _print_json(rows)
    names = [r["id"].removeprefix("qwen2.5-").removesuffix("-instruct") for r in rows]
    arch = Table("Qwen2.5-Instruct", *names, title="Model catalog (Qwen2.5 Instruct)")
    for label, key in (("parameters", "published_params"), ("layers", "layers"),
                       ("hidden size", "hidden"), ("attention heads", "heads"),
                       ("KV heads", "kv_heads"), ("head dim", "head_dim"),
                       ("FFN size", "ffn"), ("vocabulary", "vocab"),
                       ("tied embeddings", "tied_embeddings"),
                       ("max context", "max_context")):
        arch.add_row(label, *[_cell(r[key]) for r in rows])
    out.print(arch)
    sizes = Table("quant", "engine", *names, title="Weights: size, effective bits per "
                  "weight", caption="each engine offers its own quantizations")
    for i, e in enumerate(plugins.ENGINES.values()):
        if i:
            sizes.add_section()
        for q in e.quants:
            sizes.add_row(q.name, e.kind, *[
                f"{format_size(r['quants'][e.kind][q.name]['weight_bytes'])} "
                f"{r['quants'][e.kind][q.name]['bits_per_weight']:.2f}" for r in rows])
    out.print(sizes)
    listed = [r for r in measured if r["model"] in catalog.MODELS]
    if not listed:
        out.print("quality: none measured on this machine yet; `builder model quality "
                  "--synthetic --all --model ID` measures each quantization against F16")
        return
    _quality_tables(listed)


def _quality_tables(rows: list[dict[str, Any]], planned: str | None = None) -> None:
    """Quality results (quality.measured): one table per model, origin of the weights and
    text read; `planned` marks the quant a plan is for."""
    from ..model import quality

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        text = (f"{Path(r['text']['corpus']).name}, {r['tokens']} tokens "
                f"(ctx {r['text']['ctx']})")
        groups.setdefault((r["model"], r["origin"], text), []).append(r)
    for (model, origin, text), rs in groups.items():
        out.print(f"\n[bold]{escape(model)}[/] ({escape(origin)}) against F16, measured "
                  f"here on {escape(text)}:")
        t = Table("quant", "engine", "file", "mean KL divergence", "same top token")
        for r in rs:
            mark = " (planned)" if r["quant"] == planned else ""
            t.add_row(escape(r["quant"]) + mark, escape(r["engine"]), format_size(r["bytes"]),
                      f"{r['kld_mean']:.5f}", f"{r['top1_percent']:.1f}%")
        out.print(t)
        if origin == quality.SYNTHETIC:
            out.print("random weights: the KL divergence ranks the formats, the top-token "
                      "rate is far below a trained model's")

QUALITY_KEYS = ("engine", "origin", "text", "tokens", "quant", "bytes", "kld_mean",
                "kld_mean_uncertainty", "kld_p99", "top1_percent", "ppl_ratio",
                "model_sha256")


def _cell(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


# --- plan -----------------------------------------------------------------------------

@app.command("plan")
@click.option("--profile", "-p", default="x86-gateway", show_default=True,
              help="Profile name or YAML path.")
@click.option("--model", help="Catalog model id (see `builder models list`).")
@click.option("--quant", help="Quantization, e.g. Q4_K_M or int4_awq.")
@click.option("--ctx", type=int, help="Context tokens per slot.")
@click.option("--parallel", type=int, help="Concurrent request slots.")
@click.option("--kv-cache-type", help="KV cache type: f16, q8_0, q4_0, ...")
@model_file_option
@model_source_option
@cache_option
@profiles_dir_option
@json_option
def plan_cmd(profile: str, model: str | None, quant: str | None, ctx: int | None,
             parallel: int | None, kv_cache_type: str | None, model_file: Path | None,
             model_source: str | None, cache_dir: Path | None,
             profiles_dir: tuple[Path, ...], json_: bool) -> None:
    """Predict memory use and say whether it fits: for the profile's model, or for the
    model --model-file or --model-source names (read from the file itself).

    Exit status: 0 fits, 1 tight, 3 does not fit, 2 bad input.
    """
    from ..build import fetch
    from ..cache import Cache
    from ..contracts import BuildContext

    rp = ProfileStore(list(profiles_dir)).load(profile)
    rp.concrete("plan")
    if (model_file or model_source) and (model or quant):
        raise BuilderError("--model/--quant pick a catalog model; --model-file and "
                           "--model-source name one of their own: give one kind")
    if model_file and model_source:
        raise BuilderError("give --model-file or --model-source, not both")
    p = with_overrides(rp, {
        ("model", "id"): ("--model", model), ("model", "quant"): ("--quant", quant),
        ("runtime", "context_length"): ("--ctx", ctx),
        ("runtime", "parallel"): ("--parallel", parallel),
        ("runtime", "kv_cache_type"): ("--kv-cache-type", kv_cache_type),
    })
    d = resolve.resolve(rp, p)
    if model_file or model_source:
        bctx = BuildContext(device=d, cache=Cache(cache_dir), out_root=Path("out"),
                            model_file=model_file, model_source=model_source)
        d = resolve.with_model(d, d.engine.shape_of(fetch(bctx).path, p.model.quant))
    result = d.plan
    measured = _measured_for(result.input, Cache(cache_dir))
    if json_:
        _print_json({"profile": rp.name, **result.to_json(),
                     "quality": [{k: r[k] for k in QUALITY_KEYS if k in r}
                                 for r in measured]})
    else:
        i = result.input
        how = ["--profile", profile, *(a for d in profiles_dir for a in ("--profiles-dir", str(d))),
               *(("--model", i.model_id) if i.model.in_catalog
                 else ("--model-file", i.model.origin)), "--quant", i.quant]
        _render_plan(rp.name, p, result)
        _render_quality(i, measured, how)
    sys.exit(result.verdict.exit_code)


def _measured_for(i: PlanInput, cache: Cache) -> list[dict[str, Any]]:
    """The quality results kept here for the planned model on its engine: every origin
    of a catalog model's weights, a model file's own only."""
    from ..model import quality

    return [r for r in quality.measured(cache)
            if r["model"] == i.model_id and r["engine"] == i.engine.kind
            and (i.model.in_catalog or r["origin"] == i.model.origin)]


def _render_quality(i: PlanInput, measured: list[dict[str, Any]], how: list[str]) -> None:
    """The quality results kept here for the plan, or (`how`: the arguments that name
    its profile, model and quant) the command that measures it."""
    import shlex

    from ..model import quality

    if not measured and not quality.measurable(i.engine):
        return  # nothing kept, and its engine cannot measure it here
    if not any(r["quant"] == i.quant for r in measured):
        out.print(f"quality: {i.quant} not measured here; `builder model quality "
                  f"{shlex.join(how)}` measures it against F16 (`--synthetic`: random "
                  "weights of the same shape)", markup=False)
    _quality_tables(measured, i.quant)


_VERDICT_STYLE = {"fits": "bold green", "tight": "bold yellow", "does not fit": "bold red"}


def _render_plan(name: str, p: Profile, r: Plan) -> None:
    i = r.input
    bpw = r.weights * 8 / i.model.arch.n_params
    slots = "slot" if i.parallel == 1 else "slots"
    origin = "" if i.model.in_catalog else f" (from {i.model.origin})"
    out.print(f"[bold]{name}[/]: {i.model_id} {i.quant}{origin} on {i.engine.kind}, "
              f"{i.context_length} ctx x {i.parallel} {slots}, KV {i.kv_cache_type}")
    t = Table("", "bytes", "", show_header=False, box=None, padding=(0, 2))
    t.add_row("weights", format_size(r.weights), f"{bpw:.2f} bits/weight")
    if r.repacked:
        t.add_row("repacked weights", format_size(r.repacked),
                  "re-laid out by the CPU backend at load")
    t.add_row("KV cache", format_size(r.kv_total),
              f"{format_size(r.kv_per_slot)}/slot x {i.parallel}, {i.kv_cache_type}")
    t.add_row("compute buffers", format_size(r.compute), i.engine.compute_basis(i))
    t.add_row("output buffer", format_size(r.output), "")
    t.add_row("engine process", format_size(r.engine_overhead), "")
    if r.prompt_cache or r.checkpoints:
        t.add_row("prompt cache", format_size(r.prompt_cache + r.checkpoints),
                  "ceiling: earlier prompts kept for reuse")
    t.add_row("gateway", format_size(r.gateway_overhead),
              f"its MemoryMax: {i.parallel + i.max_queue} requests x "
              f"{format_size(i.max_request_bytes)}")
    t.add_row("[bold]total[/]", f"[bold]{format_size(r.total)}[/]", "")
    t.add_row("available", format_size(r.limit),
              f"{format_size(i.ram)} RAM - {format_size(i.reserved)} kept by the OS"
              + (f", MemoryMax {format_size(i.memory_max)}" if i.memory_max else ""))
    if r.gpu_share is not None:
        t.add_row("on the GPU", format_size(r.gpu_share), "unified memory, shared with CPU")
    out.print(t)
    out.print(f"verdict: [{_VERDICT_STYLE[r.verdict.value]}]{r.verdict.value}[/]: {r.reason}")
    if r.verdict is not Verdict.NO_FIT:
        out.print(f"engine MemoryMax: {format_size(r.memory_max)}")
    if r.suggestions:
        out.print("to make it fit, change one of:")
        for s in r.suggestions:
            out.print(f"  {s.change}  -> {format_size(s.total)}")
    elif r.verdict is not Verdict.FITS:
        out.print("no single change makes it fit; pick a smaller model and quantization")
    b = r.build
    if b is not None:
        if b.ok:
            out.print(f"on-device build: {b.what} peaks near {format_size(b.peak)} of "
                      f"{format_size(b.budget)}: ok")
        else:
            out.print(f"[bold yellow]warning[/]: on-device build: {b.what} peaks near "
                      f"{format_size(b.peak)}, more than the {format_size(b.budget)} "
                      f"available; {b.advice}")


# --- entry point ----------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwound like Ctrl-C, so every step cleans up after itself
    (run() ends the tool it started, with its whole process group; temporary
    directories go) instead of dying and leaving ansible, rsync or qemu running."""


def _terminated(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()
    try:
        app.main(args=argv, prog_name="builder", standalone_mode=False)
    except BuilderError as e:
        _fail(str(e), e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        sys.stdout.write(e.format_message() + "\n")
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "builder"
        _fail(f"{e.format_message()} (see `{cmd} --help`)", EXIT_ERROR)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except Terminated as e:
        _fail(f"stopped by {e}", 128 + getattr(signal, str(e), signal.SIGTERM))
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)

