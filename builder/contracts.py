"""The contracts: the types the two plug-in seams speak, at the bottom of the builder.

A target (a hardware family) and an engine (an inference engine) are plug-ins: each
implements one abstract class here (Target, Engine) and imports nothing above this
module but shared parts (image/, rootfs/, run, cache, model/). Everything above them
receives a resolved Device (builder/resolve.py, the one place a plug-in is looked up)
instead of a profile plus registry look-ups. docs/architecture.md draws the layers.

- Platform: what an engine needs to know about the hardware it is built for;
- PlanInput, Plan: the memory plan's question and answer (planner.py does the sums);
- Engine: what one inference engine supplies;
- Target: what one hardware family supplies;
- ReleaseInputs, BuildContext: what a build step, a target and an engine share;
- Device: one profile resolved.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .errors import BuilderError
from .schema import EngineSettings, Profile, TargetSettings
from .units import MiB

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from .cache import Cache, Entry
    from .device.layout import Layout
    from .errors import ProfileError
    from .model.catalog import ModelArch, Tensor
    from .model.pipeline import Fetched, ModelArtifact
    from .model.shape import ModelShape
    from .rootfs import Rootfs
    from .vm import Machine

Loc = tuple[str | int, ...]


# --- the hardware ------------------------------------------------------------------------
# What an engine needs to know about the hardware it is built for, as data: the target
# packages describe their hardware with a Platform, the engine modules read it. Neither
# side names the other.

@dataclass(frozen=True)
class Platform:
    arch: str  # Debian architecture of the binaries (amd64, arm64)
    gnu_triplet: str  # aarch64-linux-gnu, x86_64-linux-gnu: cross compilers, multiarch dirs
    # CPU: either x86-64 micro-architecture levels, one CPU backend built per level and the
    # best one the CPU supports loaded at run time (portable images), or one -march
    x86_levels: tuple[str, ...] = ()
    arm_arch: str | None = None  # e.g. armv8.2-a+dotprod+fp16 (Cortex-A76)
    # GPU: the interface its toolchain offers ("cuda"; an accelerator its target brings)
    # and its architecture as that toolchain names it (CUDA compute capability "87", Orin)
    gpu: str | None = None
    gpu_arch: str | None = None
    gpu_devices: tuple[str, ...] = ()  # device nodes (systemd DeviceAllow=) the GPU needs
    gpu_groups: tuple[str, ...] = ()  # groups that may open them (video, render)
    # SIMD features the engine's CPU kernels use (decide e.g. llama.cpp's weight repack)
    cpu_features: frozenset[str] = frozenset()
    # Where the engine is compiled: on the build host (natively or cross) or on the
    # device itself (CUDA and TensorRT come with the device's JetPack).
    build_on_device: bool = False
    cuda: str | None = None  # the CUDA release the device's GPU stack gives ("12.6", "13.2")


# --- the memory plan ---------------------------------------------------------------------
# The memory plan as data: what the planner is asked (PlanInput) and what it answers
# (Plan). Engines read a PlanInput for their memory model and may return a BuildCheck;
# the build, the release and the CLI read the Plan. The arithmetic is planner.py's.

class Verdict(StrEnum):
    FITS = "fits"
    TIGHT = "tight"
    NO_FIT = "does not fit"

    @property
    def exit_code(self) -> int:
        return {"fits": 0, "tight": 1, "does not fit": 3}[self.value]


@dataclass(frozen=True)
class PlanInput:
    """One device serving one model: the runtime knobs every engine reads (a profile's
    runtime section), the engine's own section (`settings`), the device's memory and the
    public port's limits (they bound the gateway's memory)."""

    model: ModelShape
    engine: Engine
    context_length: int  # per slot
    parallel: int
    kv_cache_type: str
    flash_attn: str
    ubatch_size: int
    ram: int
    reserved: int
    memory_max: int | None  # explicit systemd MemoryMax, None for auto
    unified_gpu: bool
    repack_types: tuple[str, ...] = ()  # weight types the CPU backend copies at load
    prompt_cache: int | None = None  # host prompt cache ceiling (bytes); None: headroom
    settings: Any = None  # the engine's own profile section (engine.settings), if any
    max_queue: int = 16
    max_request_bytes: int = MiB
    max_tokens: int = 1024

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def quant(self) -> str:
        return self.model.quant

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = asdict(self.model)
        d["engine"] = self.engine.kind
        d["settings"] = self.settings.model_dump(mode="json") if self.settings else None
        d["repack_types"] = list(self.repack_types)
        return d


@dataclass
class Suggestion:
    change: str  # what to set, e.g. "model.quant: Q8_0"
    total: int  # predicted total after the change
    verdict: Verdict


@dataclass
class BuildCheck:
    """Peak memory of building the engine on the device, against what it has."""

    what: str
    peak: int
    budget: int
    ok: bool
    advice: str


@dataclass
class Plan:
    input: PlanInput
    weights: int
    repacked: int
    kv_per_slot: int
    kv_total: int
    compute: int
    output: int
    engine_overhead: int
    gateway_overhead: int  # the gateway's share: its unit's MemoryMax (planner.gateway_memory_max)
    total: int
    budget: int
    limit: int  # what total is held against: budget, or an explicit MemoryMax
    memory_max: int  # MemoryMax to give the engine unit
    verdict: Verdict
    reason: str
    gpu_share: int | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    build: BuildCheck | None = None
    # what the engine may grow into while serving (in total, and under memory_max)
    prompt_cache: int = 0  # host copies of earlier prompts' KV (llama-server --cache-ram)
    checkpoints: int = 0  # context checkpoints (llama-server --ctx-checkpoints)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["input"] = self.input.to_json()
        d["verdict"] = self.verdict.value
        d["suggestions"] = [{**asdict(s), "verdict": s.verdict.value}
                            for s in self.suggestions]
        d["build"] = asdict(self.build) if self.build else None
        return d


# --- engines -----------------------------------------------------------------------------
# The engine contract: what one inference engine supplies to the builder.
#
# An engine is a module (or package) under builder/engines/, or any module named in
# EDGE_LLM_ENGINES, with an `ENGINE`: an instance of an Engine subclass. It owns its
# profile section (`engine.<section>:`, chosen by `engine.kind`), its quantizations and
# how big their weights are, its profile checks, how it is built (on the build host, or on
# the device), what its model artifact is (a GGUF file, a checkpoint directory) and how it
# is made, what a release carries for it and the command its unit runs, how its readiness
# is probed, the request fields it takes beyond OpenAI's, which device nodes it needs,
# and its memory model for the planner. Nothing outside the engine names it.

@dataclass(frozen=True)
class Probe:
    """How the device asks the engine on loopback whether it serves."""

    ready: str  # answers 200 once the model is loaded (the unit's ExecStartPost)
    alive: str  # answered by the engine's work loop, not only its HTTP thread (watchdog)


@dataclass(frozen=True)
class Quantization:
    """A weight format an engine offers, spelled as the engine spells it."""

    name: str
    nominal_bpw: float  # bits per weight of the main block type
    description: str


@dataclass(frozen=True)
class HostServer:
    """An engine served on this machine for a release (Engine.host_server)."""

    # serves the release's model, handed over checked against the release's sha256
    # (pipeline.held); yields the URL of its OpenAI API
    serving: Callable[[Fetched], AbstractContextManager[str]]
    what: str  # what it runs, for a person
    binary: Path  # the server executable (its sha256 names the reference it gives)
    # how far below the reference's choice the device's may rank and still be a near
    # tie (nats): None, agreement.TIE_NATS (the same weights on other kernels); more
    # where the device runs other weights than the reference (another precision)
    tie_nats: float | None = None


@dataclass(frozen=True)
class EngineArtifact:
    """An engine built on this machine, in the artifact cache (entry.out)."""

    entry: Entry
    recipe: Any

    @property
    def bin(self) -> Path:
        return self.entry.out / "bin"

    def tool(self, name: str) -> Path:
        return self.bin / name


# What an engine may need of a GPU vendor's stack in the image (Engine.gpu_stack); a
# target maps each to its vendor's packages (JetPack's on a Jetson).
GPU_STACK = ("cuda-runtime", "cuda-toolkit", "cudnn", "tensorrt")


@dataclass(frozen=True)
class Pinned:
    """A file the build takes as given: where it is, the sha256 it must have (None:
    unpinned, taken as it is), and the setting that names it (for messages)."""

    path: Path
    sha256: str | None
    setting: str


@dataclass(frozen=True)
class OfflineInstall:
    """Software installed into a rootfs at build time without network: wheels with pip
    from a wheelhouse of their dependencies (`pip install --no-index`), and source
    trees unpacked (their top directory stripped) to a directory of the rootfs."""

    wheels: tuple[Pinned, ...] = ()
    wheelhouse: Path | None = None
    wheelhouse_setting: str = ""
    trees: tuple[tuple[Pinned, str], ...] = ()  # (a tarball, the directory it becomes)
    how: str = ""  # how to prepare the wheelhouse where there is network (for messages)


class Engine(ABC):
    kind: ClassVar[str]  # what `engine.kind` names it
    section: ClassVar[str]  # its own profile section, engine.<section>: (e.g. llama_cpp)
    settings: ClassVar[type[EngineSettings]]  # that section's model
    probe: ClassVar[Probe]
    model_format: ClassVar[str]  # what the release ships: "gguf" (one file), "hf" or "onnx" (a dir)
    quants: ClassVar[tuple[Quantization, ...]]
    # whether the engine on the device returns each answer token's log-probability and
    # top alternatives (OpenAI `logprobs`): verify.min_agreement compares token by token
    # when it does, by the answer's text when it does not
    logprobs: ClassVar[bool] = True

    def settings_of(self, p: Profile) -> Any:
        """This engine's section of a profile."""
        return getattr(p.engine, self.section)

    @abstractmethod
    def version(self, p: Profile) -> str:
        """What users see as the engine's version (/v1/appliance)."""

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        """Checks of the profile that only this engine knows (location, message)."""
        return []

    def runs_on(self, platform: Platform) -> str | None:
        """Why this engine cannot run on `platform` (what it needs that is missing), or
        None where it can: an engine says where it runs, so a target never lists
        engines and a new engine runs on every target that has what it needs."""
        return None

    def relative_paths(self) -> tuple[Loc, ...]:
        """Fields of its section holding paths relative to the profile file that set
        them (resolved against that file's directory)."""
        return ()

    # --- quantizations and their size ------------------------------------------------
    def quant(self, name: str) -> Quantization | None:
        """One of its quantizations by name, any case."""
        return next((q for q in self.quants if q.name.lower() == name.lower()), None)

    @abstractmethod
    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        """Each weight tensor of `model` at `quant`, with the type it gets and its bytes,
        as this engine lays the weights out."""

    @cache  # noqa: B019  (engines live as long as the process; the arguments are values)
    def weight_bytes(self, model: ModelArch, quant: str) -> int:
        return sum(b for _, _, b in self.tensor_types(model, quant))

    @abstractmethod
    def shape_of(self, path: Path, quant: str) -> ModelShape:
        """The shape of a model file or directory (one given instead of the catalog's, or
        the one built), as this engine will load it at `quant`."""

    # --- building --------------------------------------------------------------------
    @abstractmethod
    def recipe(self, p: Profile, platform: Platform) -> Any:
        """The build, as data: .arch, .on_device, .notes, .to_json() (the cache key) and
        .commands() (what `builder engine recipe` prints)."""

    @abstractmethod
    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        """Build on this machine (cached); None when the device builds it itself."""

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        """Peak memory of building on the device, or None when it is not built there."""
        return None

    # --- the model ---------------------------------------------------------------------
    @abstractmethod
    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        """The model artifact a release carries, from what was fetched."""

    def convert(self, p: Profile, fetched: Fetched, cache: Cache, *,
                source_base: Path | None = None) -> Path:
        """The fetched model in the engine's unquantized format, made on this machine
        (`builder model convert`): where it is."""
        raise BuilderError(f"{self.kind} converts its model on the device, not on the "
                           "build host; `builder model quantize` makes what a release "
                           "carries")

    # --- on the device -----------------------------------------------------------------
    @abstractmethod
    def release_files(self, i: ReleaseInputs, tree: Path) -> None:
        """Put what the engine needs into a release tree (binaries, build settings)."""

    @abstractmethod
    def env(self, i: ReleaseInputs, layout: Layout) -> dict[str, str]:
        """The engine's settings, as the environment its unit gets (engine.env)."""

    @abstractmethod
    def exec_start(self, i: ReleaseInputs, layout: Layout) -> str:
        """The unit's ExecStart, run from `current/` (so a release switches it)."""

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        """What the gateway must know of this engine (gateway.json): the probe it answers
        from its work loop, the request fields beyond OpenAI's it takes
        (`engine_fields`: those of builder/gateway/validate.py's EXTENSION_FIELDS it
        takes, an empty list for none; left out, all of them), and the status file of a
        build on the device."""
        return {"engine_probe_path": self.probe.alive}

    def start_timeout(self, p: Profile) -> int:
        """Seconds loading may take before the unit's start fails."""
        return 600

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        """Device nodes the engine's unit may open (DeviceAllow=); none on a CPU."""
        return ()

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        """Runtime libraries the rootfs must carry for this engine."""
        return ()

    def gpu_stack(self, p: Profile, platform: Platform) -> tuple[str, ...]:
        """What of the GPU vendor's software the image must carry for this engine, in
        GPU_STACK's words (the target knows the vendor's packages for each)."""
        return ()

    def offline_install(self, device: Device) -> OfflineInstall | None:
        """Software the build installs into the rootfs with no network on the device
        (Python wheels, a source tree), or None."""
        return None

    def host_tools(self) -> dict[str, tuple[Any, ...]]:
        """What the build host needs for this engine, by `builder doctor` stage."""
        return {}

    # --- memory --------------------------------------------------------------------------
    @abstractmethod
    def memory(self, pin: PlanInput) -> dict[str, int]:
        """What the engine allocates at load, in bytes: weights, repacked, kv_per_slot,
        kv_total, compute, output, engine_overhead (and what it may grow into while
        serving: prompt_cache, checkpoints)."""

    def compute_basis(self, pin: PlanInput) -> str:
        """What sizes its compute buffers, in its own terms (`builder plan` shows it)."""
        return ""

    def repacked_types(self, platform: Platform) -> tuple[str, ...]:
        """Weight types the engine copies into a CPU-specific layout at load."""
        return ()

    def cheaper_kv(self, pin: PlanInput) -> tuple[str, PlanInput] | None:
        """A cheaper KV cache the planner may suggest: (what to set, the plan with it)."""
        return None

    def quality(self, p: Profile, fetched: Fetched, quants: list[str], cache: Cache, *,
                corpus: Path, ctx: int, chunks: int, source_base: Path | None = None
                ) -> list[dict[str, Any]] | None:
        """How close each of `quants` of the model stays to the unquantized model, measured
        on this machine over the text `corpus` (`builder model quality`): per quant its
        file size, mean KL divergence from the reference's token distributions, how often
        its top token is the reference's, its perplexity against the reference's. None
        when this engine has no such measurement."""
        return None

    def host_server(self, p: Profile, platform: Platform, tree: Path, cache: Cache, *,
                    source_base: Path | None = None) -> HostServer | None:
        """A server on this machine that answers as the device's engine would, from the
        release at `tree` (its settings; its engine build when that runs here; `p` the
        profile it was made from), serving the release's model it is handed; None when
        this machine cannot run one (`builder verify`'s agreement check)."""
        return None

    def tuner(self) -> Any:
        """How `builder tune` measures this engine on a device (builder/tune.py: TOOL,
        knobs, commands, read; with a `weights` knob also QUANTIZE and requantize), or
        None when it cannot be tuned."""
        return None


# --- targets -----------------------------------------------------------------------------
# The target contract: what one hardware family supplies to the build.
#
# A target is a package under builder/targets/, or any module named in EDGE_LLM_TARGETS,
# with a `TARGET` (an instance of a Target subclass). It names its hardware (a Platform
# for the engine builds), its own profile section, what a profile may ask of it
# (architectures, OS bases, accelerators, boot media, engines), its root filesystem, its
# boot layout and what a build delivers (a disk image with its bmap, a flash package),
# the vendor inputs a build takes, the host tools it needs, its own Ansible roles and
# verify checks, how it boots in a VM for tests and how it is written to a device (its
# flash methods). A step that does not apply says so: the hook returns None (mkosi's
# steps do the same), or raises NotSupported with the reason a user reads.

class NotSupported(BuilderError):
    """This target does not do that (boot in a VM, be flashed ...): the message says why
    and what to do instead."""


@dataclass(frozen=True)
class Delivery:
    """What a build hands over, in out/<profile>/: the files and how to use them."""

    kind: str  # "disk-image" (written with bmaptool) or "flash-package" (a flashing tool)
    files: dict[str, Path]  # role -> file: image, bmap, compressed; package ...
    sha256: str  # of the main file
    size: int  # bytes of the main file
    info: dict[str, Any] = field(default_factory=dict)  # layout facts for the manifest

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": {k: v.name for k, v in self.files.items()},
                "sha256": self.sha256, "bytes": self.size, **self.info}


@dataclass(frozen=True)
class VendorInput:
    """A file a vendor supplies that a build takes (a BSP, an OS image), given on the
    command line as --<flag> PATH: `builder build` shows every target's."""

    name: str  # its key in BuildContext.vendor_inputs
    flag: str  # the option, without dashes
    help: str


@dataclass(frozen=True)
class FlashMethod:
    """A way the lab writes a device (a lab inventory's `flash:`)."""

    name: str
    writes: str  # the Delivery kind it writes
    writer: bool  # needs `writer:` (the block device of an SD/USB writer)
    description: str


# The flash method of every target that delivers a disk image: bmaptool through an
# SD/USB writer (Target.flash's default, builder/flash.py)
SD_WRITER = FlashMethod("sd", writes="disk-image", writer=True,
                        description="the disk image written with bmaptool through an SD/USB "
                        "writer (writer: its whole-disk block device)")


@dataclass(frozen=True)
class Tool:
    """A command a stage of the build needs on the host, and the Debian package that
    brings it (`builder doctor`)."""

    command: str  # looked for on PATH, or an absolute path
    package: str
    why: str


# cross-building for arm64 (llama.cpp), and running arm64 in a chroot under qemu-user
# (mmdebstrap's foreign rootfs; arch-test is its foreign-architecture check)
ARM64_TOOLS = (Tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "cross-compiles"),
               Tool("qemu-aarch64-static", "qemu-user-static", "runs arm64 in a chroot"),
               Tool("update-binfmts", "binfmt-support", "registers qemu-user"),
               Tool("arch-test", "arch-test", "mmdebstrap's foreign-architecture check"))


class Target(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    section: ClassVar[str]  # the profile section of its own settings, e.g. "x86"
    settings: ClassVar[type[TargetSettings]]
    arches: ClassVar[tuple[str, ...]]
    os_bases: ClassVar[tuple[str, ...]]
    storage_kinds: ClassVar[tuple[str, ...]]
    accelerators: ClassVar[tuple[str, ...]] = ("none",)
    vm_stages: ClassVar[tuple[str, ...]] = ()  # `builder doctor` stages `builder vm` needs
    vendor_inputs: ClassVar[tuple[VendorInput, ...]] = ()
    flash_methods: ClassVar[tuple[FlashMethod, ...]] = ()
    # its own Ansible roles (a directory in Galaxy layout) and those applied after the
    # shared ones; its own testinfra checks, run by `builder verify` after the shared suite
    roles_dir: ClassVar[Path | None] = None
    roles: ClassVar[tuple[str, ...]] = ()
    verify_checks: ClassVar[Path | None] = None

    def settings_of(self, p: Profile) -> Any:
        return getattr(p, self.section)

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        """Checks of the profile that only this target knows."""
        return []

    # --- hardware ------------------------------------------------------------------
    @abstractmethod
    def platform(self, p: Profile) -> Platform:
        """CPU, GPU and where the engine is compiled, for the engine module."""

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        """`builder doctor` stages a full build of this profile needs on the host."""
        return ()

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        """What the build host needs for this target, by `builder doctor` stage (its
        own stages, or more tools for a shared one)."""
        return {}

    # --- build steps ---------------------------------------------------------------
    @abstractmethod
    def rootfs(self, ctx: BuildContext) -> Rootfs:
        """The OS tree the roles are applied to, as a cached tarball."""

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        """Packages the boot layout needs in the rootfs (kernel, bootloader, firmware)."""
        return ()

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        """Role variables only this target sets (merged over the shared ones)."""
        return {}

    def assemble(self, ctx: BuildContext) -> Delivery | None:
        """Turn the provisioned rootfs into what is delivered (None: nothing more)."""
        return None

    def assembly_inputs(self, ctx: BuildContext) -> dict[str, Any] | None:
        """Everything `assemble` reads besides the tree (layout, sizes), when that is all
        it reads: the build then reuses a delivery made from the same tree and inputs.
        None (the default): it reads more (a vendor's files), it is made every build."""
        return None

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        """What this target writes into a build that is a pure function of the profile
        (boot configuration, partition tables), by file name: golden-tested."""
        return {}

    # --- after the build -------------------------------------------------------------
    def flash(self, build_dir: Path, manifest: dict[str, Any], built: Profile | None,
              request: Any) -> str:
        """Write the build to a device (`builder flash`); where it went. `built` is the
        profile it was built from (its manifest's, if it records one). A target that
        delivers a disk image writes it with builder/flash.py (bmaptool, after checking
        the device is safe)."""
        raise NotSupported(f"{self.name}: its builds are not written to a device here")

    def vm_machine(self, build_dir: Path, manifest: dict[str, Any]) -> Machine:
        """How this build boots in QEMU for tests and `builder vm`."""
        raise NotSupported(f"{self.name}: no VM boots this target's build")


# --- builds and releases -----------------------------------------------------------------
# What a build step, a target and an engine share while a profile is built: the build
# context (filled in step by step, builder/build.py) and what a release is made of.

@dataclass(frozen=True)
class ReleaseInputs:
    """Everything a release is made of: the device it is for (profile, engine, platform,
    plan) and its resolved artifacts."""

    device: Device
    engine_dir: Path | None  # an engine built on the build host; None: the device builds it
    engine_key: str  # its cache key, or the hash of the recipe the device runs
    gateway_dir: Path  # the gateway package
    gateway_key: str
    model: ModelArtifact
    model_id: str  # what clients name (the engine's alias)

    @property
    def profile(self) -> Profile:
        return self.device.profile

    @property
    def profile_name(self) -> str:
        return self.device.name

    @property
    def engine(self) -> Engine:
        return self.device.engine

    @property
    def plan(self) -> Plan:
        return self.device.plan

    @property
    def release_id(self) -> str:
        blob = json.dumps({"engine": self.engine_key, "model": self.model.sha256,
                           "gateway": self.gateway_key, "model_id": self.model_id,
                           "profile": self.profile.model_dump(mode="json")}, sort_keys=True)
        return "r" + hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class BuildContext:
    device: Device
    cache: Cache
    out_root: Path
    model_file: Path | None = None
    model_source: str | None = None  # a catalog.PYPI_MODELS name, replacing model.source
    authorized_keys: list[str] = field(default_factory=list)
    jobs: int | None = None
    signing_key: Path | None = None  # None: the builder's own (sshkey.signing_key)
    # what a vendor supplies, given on the command line (the target's vendor_inputs:
    # name -> path); the target takes what it knows
    vendor_inputs: dict[str, Path] = field(default_factory=dict)
    vm_image: bool = False  # also what QEMU needs to boot it (--with-vm-image)
    # filled in by the steps
    work: Path | None = None
    fetched: Fetched | None = None
    engine_artifact: EngineArtifact | None = None
    model: ModelArtifact | None = None
    rootfs: Rootfs | None = None
    provisioned: Rootfs | None = None  # the rootfs after overlays and roles, cached
    held: list[Entry] = field(default_factory=list)  # cache entries held until the end
    rootfs_dir: Path | None = None
    release_id: str = ""
    gateway: Entry | None = None  # the gateway package, a cache entry
    bundle: Any = None  # the release made (fleet.release.Bundle)
    signers: list[str] = field(default_factory=list)
    provision_vars: dict[str, Any] = field(default_factory=dict)
    delivery: Delivery | None = None

    @property
    def logs(self) -> Path:
        """Logs of the last build of this profile: outside the work directory, which a
        failed build removes, so the log an error names is still there."""
        d = self.out_root / ".logs" / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def p(self) -> Profile:
        return self.device.profile

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def target(self) -> Target:
        return self.device.target

    @property
    def engine(self) -> Engine:
        return self.device.engine

    @property
    def plan(self) -> Plan:
        return self.device.plan

    @property
    def replaced(self) -> bool:
        """The model comes from --model-file or --model-source, not the profile."""
        return self.model_file is not None or self.model_source is not None


# --- a resolved device -------------------------------------------------------------------
# One resolved device: a profile with everything that follows from it, looked up and
# computed once (builder/resolve.py) and passed everywhere instead of a profile plus
# registry look-ups.

class ProfileSource(Protocol):
    """Where a profile's values came from (profiles.ResolvedProfile): for messages that
    name a file, line and field, and for paths relative to the file that set them."""

    name: str
    path: Path
    chain: list[Path]

    def dir_of(self, *loc: str) -> Path: ...

    def where(self, loc: Loc, *, key: bool = False) -> str: ...

    def error(self, loc: Loc, message: str, *, key: bool = False) -> ProfileError: ...


@dataclass(frozen=True)
class Device:
    name: str  # the profile's name
    profile: Profile
    source: ProfileSource
    target: Target
    engine: Engine
    platform: Platform
    layout: Layout
    plan: Plan  # for the catalog model, or the model file given instead (resolve.with_model)

    @property
    def engine_base_dir(self) -> Path:
        """The directory the engine's relative paths are relative to: that of the
        profile file that set the first of them, else the profile's own."""
        for loc in self.engine.relative_paths():
            return self.source.dir_of("engine", self.engine.section, *loc)
        return self.source.path.parent
