"""A profile resolved into a Device: its target, its engine, their platform, the device
layout and the memory plan, computed once. The one place a plug-in is looked up by
name (a profile's `target` and `engine.kind`, or a build manifest's); everything above
passes the Device on.

Also the profile checks that need the plug-ins (what the target takes, what the engine
takes, the catalog), which profiles.validate runs after the schema, so any profile
that loads is one that resolves.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from . import names, planner, plugins
from .contracts import Device, Engine, PlanInput, Target
from .device.layout import DEFAULT as LAYOUT
from .errors import BuilderError
from .model import catalog
from .model.shape import ModelShape, from_catalog

if TYPE_CHECKING:
    from .contracts import ProfileSource
    from .schema import Profile

Loc = tuple[str | int, ...]


def target_named(name: str) -> Target:
    try:
        return plugins.TARGETS[name]
    except KeyError:
        raise BuilderError(f"target {name!r}: unknown; known: "
                           f"{', '.join(plugins.TARGETS)}") from None


def engine_named(kind: str) -> Engine:
    try:
        return plugins.ENGINES[kind]
    except KeyError:
        raise BuilderError(f"engine.kind: unknown engine {kind!r}; known: "
                           f"{', '.join(plugins.ENGINES)}") from None


def resolve(source: ProfileSource, p: Profile, shape: ModelShape | None = None) -> Device:
    """The device profile `p` (validated, from `source`) describes, planned for its
    catalog model or for `shape` (a model file given instead)."""
    target, engine = target_named(p.target), engine_named(p.engine.kind)
    platform = target.platform(p)
    device = Device(name=source.name, profile=p, source=source, target=target,
                    engine=engine, platform=platform, layout=LAYOUT,
                    plan=None)  # type: ignore[arg-type]  (planned just below)
    return with_model(device, shape)


def with_model(d: Device, shape: ModelShape | None) -> Device:
    """`d` planned for `shape` (a model file given instead of the catalog's), or for its
    catalog model when None."""
    pin = plan_input(d, shape)
    build = d.engine.build_check(d.profile, d.platform)
    return replace(d, plan=planner.plan(pin, build=build))


def plan_input(d: Device, shape: ModelShape | None = None) -> PlanInput:
    """What the planner is asked for this device (a catalog model, or `shape`)."""
    p, e = d.profile, d.engine
    mm = p.service.memory_max
    return PlanInput(
        model=shape or from_catalog(p.model.id, p.model.quant, e), engine=e,
        context_length=p.runtime.context_length, parallel=p.runtime.parallel,
        kv_cache_type=p.runtime.kv_cache_type, flash_attn=p.runtime.flash_attn,
        ubatch_size=p.runtime.ubatch_size, ram=p.device.ram,
        reserved=p.os.reserved_memory, memory_max=None if mm == "auto" else mm,
        unified_gpu=p.device.accelerator.kind != "none"
        and p.device.accelerator.memory == "unified",
        repack_types=e.repacked_types(d.platform),
        prompt_cache=None if p.runtime.prompt_cache == "auto" else p.runtime.prompt_cache,
        settings=e.settings_of(p), max_queue=p.service.max_queue,
        max_request_bytes=p.service.max_request_bytes, max_tokens=p.service.max_tokens)


def built_profile(manifest: dict) -> Profile | None:
    """The profile a build was made from, as its manifest records it (None: it does not)."""
    data = (manifest.get("inputs") or {}).get("profile")
    return plugins.PROFILE.validate_python(data) if data else None


# --- checks that need the plug-ins ---------------------------------------------------------

def canonical_quant(p: Profile) -> str:
    """The profile's quantization as its engine spells it (any case is accepted)."""
    q = engine_named(p.engine.kind).quant(p.model.quant)
    return q.name if q else p.model.quant


def problems(p: Profile) -> list[tuple[Loc, str]]:
    """Checks across fields and against the catalog, the target and the engine, in
    reading order."""
    out: list[tuple[Loc, str]] = []
    target = target_named(p.target)
    engine = plugins.ENGINES.get(p.engine.kind)
    for loc, value, allowed, what in (
            (("device", "arch"), p.device.arch, target.arches, "architecture"),
            (("device", "accelerator", "kind"), p.device.accelerator.kind,
             target.accelerators, "accelerator")):
        if value not in allowed:
            out.append((loc, f"{value} is not a {target.name} {what}; use "
                        f"{' or '.join(allowed)}"))
    if p.device.storage.kind not in target.storage_kinds:
        out.append((("device", "storage", "kind"), f"{p.device.storage.kind!r}: "
                    f"{target.name} boots from {', '.join(target.storage_kinds)}"))
    if p.os.base not in target.os_bases:
        out.append((("os", "base"), f"{p.os.base!r} is not an OS base for "
                    f"{target.name}; use {' or '.join(target.os_bases)}"))
    if engine is not None:
        platform = target.platform(p)
        why = engine.runs_on(platform)
        if why:
            runs = [e.kind for e in plugins.ENGINES.values() if e.runs_on(platform) is None]
            out.append((("engine", "kind"), f"{p.engine.kind} cannot run on {target.name} "
                        f"({why}); use {' or '.join(runs) or 'another target'}"))
    out += target.problems(p)
    model = catalog.MODELS.get(p.model.id.lower())
    if model is None:
        out.append((("model", "id"), f"unknown model {p.model.id!r}; known: "
                    f"{', '.join(catalog.MODELS)}"))
    if engine is not None and engine.quant(p.model.quant) is None:
        out.append((("model", "quant"), f"{p.model.quant!r} is not a {engine.kind} "
                    f"quantization; choose one of "
                    f"{', '.join(q.name for q in engine.quants)}"))
    rt = p.runtime
    if model and rt.context_length > model.max_context:
        out.append((("runtime", "context_length"), f"{rt.context_length} exceeds "
                    f"{model.id}'s maximum context of {model.max_context}"))
    if engine is not None:
        out += engine.problems(p)
    if rt.threads is not None and rt.threads > p.device.cpu_cores:
        out.append((("runtime", "threads"), f"{rt.threads} exceeds device.cpu_cores "
                    f"({p.device.cpu_cores})"))
    for i, cpu in enumerate(p.service.cpu_affinity or []):
        if not 0 <= cpu < p.device.cpu_cores:
            out.append((("service", "cpu_affinity", i), f"CPU {cpu} does not exist; the "
                        f"device has CPUs 0-{p.device.cpu_cores - 1}"))
    if p.service.port == p.service.engine_port:
        out.append((("service", "engine_port"), f"{p.service.engine_port} is also "
                    f"service.port; pick another"))
    for have, lack in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if getattr(p.service, have) and not getattr(p.service, lack):
            out.append((("service", have), f"set service.{lack} too (HTTPS needs both)"))
    for name in ("tls_cert", "tls_key"):
        value = getattr(p.service, name)
        if value and not (value.startswith("/") and names.is_path_text(value)):
            # it goes into the gateway unit (LoadCredential=): no spaces, quotes or %
            out.append((("service", name), f"{value!r} must be an absolute path on the "
                        "device, of letters, digits and _ . / + @ , : = ~ -"))
    if p.service.max_tokens > p.runtime.context_length:
        out.append((("service", "max_tokens"), f"{p.service.max_tokens} is more than a "
                    f"slot holds (runtime.context_length {p.runtime.context_length}); "
                    "lower it"))
    return out
