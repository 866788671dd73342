"""Finding, merging (`extends`) and validating device profiles.

Search path, first match wins: each `--profiles-dir`, then `./profiles` of the
working directory, then the built-in profiles. Merge rules, parent first:
mappings merge key by key, lists and scalars replace, `null` resets a key to its
default. `abstract` and `extends` are not inherited. A profile that extends its own
name gets the next profile of that name down the search path (so a user's
`profiles/x86-gateway.yaml` can extend the built-in one).
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import names, plugins, resolve
from . import tuned as tuned_mod
from .data import data_dir
from .errors import ProfileError, display_path
from .schema import Profile
from .yamlsrc import Document, Loc, Pos, load_document

SUFFIXES = (".yaml", ".yml")
_NOT_INHERITED = ("extends", "abstract")


def builtin_dir() -> Path:
    return data_dir("profiles")


def search_path(profiles_dirs: list[Path] | None = None) -> list[Path]:
    dirs = [*(profiles_dirs or []), Path.cwd() / "profiles", builtin_dir()]
    seen: set[Path] = set()
    out = []
    for d in dirs:
        r = d.resolve()
        if r.is_dir() and r not in seen:
            seen.add(r)
            out.append(r)
    for d in profiles_dirs or []:
        if not d.is_dir():
            raise ProfileError(f"--profiles-dir {display_path(d)}: no such directory")
    return out


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(SUFFIXES)


@dataclass
class ResolvedProfile:
    name: str
    path: Path
    chain: list[Path]  # merge order: farthest ancestor first, this file last
    data: dict[str, Any]
    positions: dict[Loc, Pos]
    profile: Profile | None  # None for abstract profiles
    abstract: bool = False
    notes: list[str] = field(default_factory=list)
    # model.quant as the profile itself says it, before a tuned overlay's `weights:`
    # (what `builder tune` measures against; None: no overlay chose one)
    untuned_quant: str | None = None

    def pos(self, loc: Loc) -> Pos:
        """Where `loc` (or its nearest written ancestor) was set."""
        for i in range(len(loc), 0, -1):
            if loc[:i] in self.positions:
                return self.positions[loc[:i]]
        return Pos(self.path, 1, 1, 1, 1)

    def dir_of(self, *loc: str) -> Path:
        """Directory of the file that set `loc`: relative paths in a profile are relative
        to the file they are written in."""
        return self.pos(loc).file.parent

    def concrete(self, verb: str = "use") -> Profile:
        """The validated profile; an abstract base is refused."""
        if self.profile is None:
            raise ProfileError(f"{display_path(self.path)}: is an abstract base; {verb} a "
                               f"profile that extends it")
        return self.profile

    def where(self, loc: Loc, *, key: bool = False) -> str:
        """file:line:col of the value at `loc` (of the key itself when `key`)."""
        pos = self.pos(loc)
        exact = loc in self.positions
        return str(pos) if key or not exact else pos.of_value()

    def error(self, loc: Loc, message: str, *, key: bool = False) -> ProfileError:
        return ProfileError(f"{self.where(loc, key=key)}: {_dotted(loc)}: {message}")


class ProfileStore:
    """Profiles on a search path."""

    def __init__(self, profiles_dirs: list[Path] | None = None):
        self.dirs = search_path(profiles_dirs)

    # --- lookup -------------------------------------------------------------------
    def _candidates(self, name: str) -> list[Path]:
        return [d / f"{name}{s}" for d in self.dirs for s in SUFFIXES
                if (d / f"{name}{s}").is_file()]

    def find(self, ref: str, *, skip: Path | None = None,
             first_dir: Path | None = None) -> Path:
        if looks_like_path(ref):
            return Path(ref)
        cands = self._candidates(ref)
        if first_dir is not None:
            own = [first_dir / f"{ref}{s}" for s in SUFFIXES if (first_dir / f"{ref}{s}")
                   .is_file()]
            cands = own + [c for c in cands if c not in own]
        if skip is not None:
            # The file itself and everything that shadows it are skipped.
            resolved = [c.resolve() for c in cands]
            if skip.resolve() in resolved:
                cands = cands[resolved.index(skip.resolve()) + 1:]
        if not cands:
            raise ProfileError(self._unknown(ref))
        return cands[0]

    def _unknown(self, ref: str) -> str:
        names = self.names(include_abstract=True)
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"unknown profile {ref!r}{hint} (searched "
                f"{', '.join(display_path(d) for d in self.dirs)}; "
                f"`builder profiles list` shows them)")

    def names(self, include_abstract: bool = False) -> list[str]:
        seen: dict[str, None] = {}
        for d in self.dirs:
            for p in sorted(d.iterdir()):
                if p.suffix in SUFFIXES and p.stem not in seen and (
                        include_abstract or not _is_abstract_file(p)):
                    seen[p.stem] = None
        return list(seen)

    # --- resolution ---------------------------------------------------------------
    def load(self, ref: str) -> ResolvedProfile:
        path = self.find(ref)
        return self.resolve_file(path)

    def resolve_file(self, path: Path) -> ResolvedProfile:
        if not names.PROFILE_NAME.fullmatch(path.stem):
            # the name is a directory under OUT, a role variable and a release field
            raise ProfileError(f"{display_path(path)}: {path.stem!r} is not a profile name "
                               "(letters, digits and . _ -, starting with a letter or digit, "
                               "at most 64); rename the file")
        data, positions, chain = self._merged(path, stack=[])
        doc_abstract = bool(load_document(path).data.get("abstract", False))
        rp = ResolvedProfile(name=path.stem, path=path, chain=chain, data=data,
                             positions=positions, profile=None, abstract=doc_abstract)
        untuned = copy.deepcopy(data)
        overlay = _with_tuned(rp)
        rp.profile = validate(rp)
        if overlay is not None and rp.profile is not None:
            _check_tuned(rp, overlay, untuned)
        return rp

    def _merged(self, path: Path, stack: list[Path]
                ) -> tuple[dict[str, Any], dict[Loc, Pos], list[Path]]:
        doc = load_document(path)
        parents = _extends_list(doc)
        data: dict[str, Any] = {}
        positions: dict[Loc, Pos] = {}
        chain: list[Path] = []
        for i, ref in enumerate(parents):
            loc: Loc = ("extends",) if isinstance(doc.data["extends"], str) else ("extends", i)
            try:
                ppath = self.find(ref, skip=path if ref == path.stem else None,
                                  first_dir=path.parent)
            except ProfileError as e:
                raise ProfileError(f"{doc.positions[loc].of_value()}: extends: {e}"
                                   ) from None
            if ppath.resolve() in [p.resolve() for p in (*stack, path)]:
                names = " -> ".join(p.stem for p in (*stack, path, ppath))
                raise ProfileError(f"{doc.positions[loc].of_value()}: extends: circular "
                                   f"inheritance {names}; remove one of these extends")
            pdata, ppos, pchain = self._merged(ppath, [*stack, path])
            for k in _NOT_INHERITED:
                pdata.pop(k, None)
            _merge(data, positions, pdata, ppos, ())
            chain += [p for p in pchain if p not in chain]
        _merge(data, positions, doc.data, doc.positions, ())
        chain.append(path)
        return data, positions, chain


def _with_tuned(rp: ResolvedProfile) -> tuned_mod.Overlay | None:
    """The tuned overlay `tuned:` names merged into rp's runtime (its positions kept, so
    an error names the overlay's line); None when there is none."""
    ref = rp.data.get("tuned")
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref:
        raise rp.error(("tuned",), f"expected the path of a tuned overlay, got {ref!r}")
    path = rp.dir_of("tuned") / ref
    if not path.is_file():
        raise rp.error(("tuned",), f"{display_path(path)}: no such file (`builder tune "
                       f"--profile {rp.name}` writes one)")
    overlay = tuned_mod.load(path)
    rp.notes.append(f"runtime tuned by {display_path(overlay.path)}"
                    + ("" if overlay.complete else " (partial: the tune was interrupted)"))
    runtime_pos = {k: v for k, v in overlay.positions.items()
                   if k[:1] == ("runtime",) and len(k) > 1}
    _merge(rp.data, rp.positions, {"runtime": overlay.runtime}, runtime_pos, ())
    if overlay.weights is not None:  # the weight format it chose: the release's model.quant
        _merge(rp.data, rp.positions, {"model": {"quant": overlay.weights}},
               {("model", "quant"): overlay.positions[("weights",)]}, ())
    return overlay


def _check_tuned(rp: ResolvedProfile, overlay: tuned_mod.Overlay,
                 untuned: dict[str, Any]) -> None:
    """An overlay applies to the model it was tuned for, and stays inside the memory
    plan: a setting that grows memory (a wider KV type, a larger ubatch, flash attention
    off) is re-planned, and refused when the plan no longer fits though it did without
    the overlay (a profile that never fitted is the plan's to report)."""
    from .contracts import Verdict

    p = rp.profile
    assert p is not None
    where = display_path(overlay.path)
    # the model it was measured on is the profile's own (before a weight format it chose)
    base = canonical(_validate(untuned)) if overlay.weights is not None else p
    if (overlay.model_id, overlay.quant.upper()) != (base.model.id,
                                                    base.model.quant.upper()):
        raise ProfileError(f"{where}: tuned for {overlay.model_id} {overlay.quant}, but "
                           f"the profile runs {base.model.id} {base.model.quant}; run "
                           f"`builder tune --profile {rp.name}` again or remove `tuned:` "
                           f"({rp.where(('tuned',))})")
    if overlay.weights is not None:
        rp.untuned_quant = base.model.quant
        _check_weights(rp, overlay, base)
    plan = resolve.resolve(rp, p).plan
    if plan.verdict is not Verdict.NO_FIT:
        return
    base = canonical(_validate(untuned))
    if resolve.resolve(rp, base).plan.verdict is not Verdict.NO_FIT:
        cores = p.device.cpu_cores
        settings = ", ".join(
            [f"{k} {_word(getattr(p.runtime, k))}" for k in overlay.runtime
             if getattr(p.runtime, k) != getattr(base.runtime, k)
             and not (k == "threads" and p.runtime.threads == (base.runtime.threads or cores))]
            + ([f"weights {p.model.quant}"] if p.model.quant != base.model.quant else []))
        raise ProfileError(f"{where}: its runtime settings ({settings}) leave the memory "
                           f"plan: {plan.reason}; run `builder tune --profile {rp.name}` "
                           f"again or remove `tuned:` ({rp.where(('tuned',))})")


def _check_weights(rp: ResolvedProfile, overlay: tuned_mod.Overlay, base: Profile) -> None:
    """An overlay's `weights:` is one of the formats its engine's tuner tries for the
    profile on its platform (on ARM, the catalog's of the profile's size): a bigger or
    smaller format is a quality choice, the profile's own to make."""
    d = resolve.resolve(rp, base)
    formats = getattr(d.engine.tuner(), "weight_formats", None)
    others = [v["weights"] for k in (formats(base, d.platform) if formats else [])
              for v in k.values]
    assert overlay.weights is not None
    if overlay.weights.upper() in [q.upper() for q in (base.model.quant, *others)]:
        return
    tries = (f"it tries {', '.join(others)}" if others
             else f"it tries none on {d.platform.arch}")
    raise ProfileError(f"{overlay.where('weights')}: weights: {overlay.weights} is not a "
                       f"weight format `builder tune` chooses for {base.model.quant} here "
                       f"({tries}); set model.quant in the profile instead")


def _word(v: Any) -> str:
    return {True: "true", False: "false"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _is_abstract_file(path: Path) -> bool:
    try:
        return bool(load_document(path).data.get("abstract", False))
    except ProfileError:
        return False


def _extends_list(doc: Document) -> list[str]:
    ext = doc.data.get("extends")
    if ext is None:
        return []
    if isinstance(ext, str):
        return [ext]
    if isinstance(ext, list) and all(isinstance(x, str) for x in ext):
        return ext
    raise ProfileError(f"{doc.positions[('extends',)].of_value()}: extends: expected a "
                       f"profile name or a list of names, got {ext!r}")


def _purge(positions: dict[Loc, Pos], prefix: Loc) -> None:
    n = len(prefix)
    for k in [k for k in positions if k[:n] == prefix]:
        del positions[k]


def _merge(dst: dict[str, Any], dst_pos: dict[Loc, Pos], src: dict[str, Any],
           src_pos: dict[Loc, Pos], loc: Loc) -> None:
    for key, value in src.items():
        here = (*loc, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], dst_pos, value, src_pos, here)
            if here in src_pos:
                dst_pos[here] = src_pos[here]
            continue
        _purge(dst_pos, here)
        if value is None:
            dst.pop(key, None)  # null resets to the default
            continue
        dst[key] = copy.deepcopy(value)
        n = len(here)
        dst_pos.update({k: v for k, v in src_pos.items() if k[:n] == here})


# --- validation -----------------------------------------------------------------------

def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            m = _section_model(arg)
            if m:
                return m
    return None


def _model_for(data: dict[str, Any]) -> type[BaseModel]:
    """The profile model that `data` validates against: its target's, or the shared one."""
    return plugins.PROFILE_MODELS.get(str(data.get("target")), Profile)


def _fields_at(loc: Loc, model: type[BaseModel] | None = Profile) -> list[str]:
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _section_model(model.model_fields[part].annotation)
    return list(model.model_fields) if model else []


def _data_loc(loc: tuple[Any, ...], data: dict[str, Any]) -> Loc:
    """Trim pydantic's loc (which names union members, and the target's tag first) to a
    path present in the data."""
    if loc and loc[0] == data.get("target") and loc[0] not in data:
        loc = loc[1:]
    model = _model_for(data)
    out: list[str | int] = []
    node: Any = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif isinstance(part, str) and part in _fields_at(tuple(out), model):
            out.append(part)  # a missing field: still name it
            break
        else:
            break
        out.append(part)
    return tuple(out)


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false",
    "string": "text", "list": "a list", "dict": "a mapping (key: value lines)",
    "model": "a mapping (key: value lines)",
}


def _describe(err: dict[str, Any]) -> str:
    typ: str = err["type"]
    got = err.get("input")
    if typ == "missing":
        return "required field is missing"
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        tag = err.get("ctx", {}).get("tag")
        known = ", ".join(plugins.TARGETS)
        return (f"unknown target {tag!r}; known: {known}" if tag else
                f"required field is missing (one of {known})")
    if typ == "literal_error":
        return f"must be one of {err['ctx']['expected']}, got {got!r}"
    kind = typ.split("_")[0]
    if typ.endswith(("_type", "_parsing")) and kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {got!r}"
    if typ == "int_from_float":
        return f"expected an integer, got {got!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{msg}, got {got!r}" if "got" not in msg else msg


def _unknown_field_message(loc: Loc, model: type[BaseModel]) -> str:
    valid = _fields_at(loc[:-1], model)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field; valid fields here: {', '.join(valid)}"


def validation_error(rp: ResolvedProfile, exc: ValidationError,
                     ignore_missing: bool = False) -> ProfileError | None:
    """The first problem in `exc`, as one line pointing at the file that caused it."""
    errors = [e for e in exc.errors() if not (ignore_missing and e["type"] == "missing")]
    if not errors:
        return None
    first = errors[0]
    loc = _data_loc(first["loc"], rp.data)
    if first["type"] == "extra_forbidden":
        return rp.error(loc, _unknown_field_message(loc, _model_for(rp.data)), key=True)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return rp.error(("target",), _describe(first))
    # Several errors at one place come from a union (e.g. a size or 'auto').
    same = [_describe(e) for e in errors if _data_loc(e["loc"], rp.data) == loc]
    message = "; or ".join(dict.fromkeys(same))
    if first["type"] == "missing":
        parent = loc[:-1]
        where = rp.where(parent, key=True) if parent else f"{display_path(rp.path)}:1:1"
        missing = [_dotted(m) for m in dict.fromkeys(
            _data_loc(e["loc"], rp.data) for e in errors if e["type"] == "missing")
            if m[:-1] == parent]
        if len(missing) > 1:
            return ProfileError(f"{where}: {', '.join(missing)}: required fields are "
                                f"missing")
        return ProfileError(f"{where}: {_dotted(loc)}: {message}")
    return rp.error(loc, message)


def validate(rp: ResolvedProfile) -> Profile | None:
    try:
        profile = _validate(rp.data, abstract=rp.abstract)
    except ValidationError as exc:
        err = validation_error(rp, exc, ignore_missing=rp.abstract)
        if err:
            raise err from None
        return None  # an abstract base may leave required fields to its children
    if rp.abstract:
        return None
    problems = resolve.problems(profile)
    if problems:
        loc, message = problems[0]
        raise rp.error(loc, message)
    return canonical(profile)


def _validate(data: dict[str, Any], *, abstract: bool = False) -> Profile:
    """Validate against the target's profile model; an abstract base that names no
    target yet is checked against the shared fields and each target section it sets."""
    if abstract and "target" not in data:
        for name, settings in plugins.TARGET_SECTIONS.items():
            if name in data:
                settings.model_validate(data[name])
        shared = {k: v for k, v in data.items() if k not in plugins.TARGET_SECTIONS}
        return plugins.SHARED_PROFILE.model_validate({**shared, "target": ""})
    return plugins.PROFILE.validate_python(data)


def canonical(p: Profile) -> Profile:
    """Spellings normalised: catalog ids lower case, quantization as the engine writes it."""
    model = p.model.model_copy(update={"id": p.model.id.lower(),
                                       "quant": resolve.canonical_quant(p)})
    return p.model_copy(update={"model": model})


def with_overrides(rp: ResolvedProfile, overrides: dict[Loc, tuple[str, Any]]) -> Profile:
    """The profile with command-line values set; errors name the flag, not a file."""
    given = {loc: v for loc, v in overrides.items() if v[1] is not None}
    if not given:
        assert rp.profile is not None
        return rp.profile
    data = copy.deepcopy(rp.data)
    for loc, (_, value) in given.items():
        node = data
        for part in loc[:-1]:
            node = node.setdefault(part, {})
        node[loc[-1]] = value

    def flag_error(loc: Loc, message: str) -> ProfileError | None:
        for oloc, (flag, _) in given.items():
            if loc[: len(oloc)] == oloc:
                return ProfileError(f"{flag}: {message}")
        return None

    try:
        profile = _validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = _data_loc(e["loc"], data)
        raise (flag_error(loc, _describe(e)) or rp.error(loc, _describe(e))) from None
    for loc, message in resolve.problems(profile):
        raise flag_error(loc, message) or rp.error(loc, message)
    return canonical(profile)
