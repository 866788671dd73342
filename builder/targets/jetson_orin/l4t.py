"""NVIDIA Jetson Linux (L4T): the BSP (Jetson_Linux_R<rel>_aarch64.tbz2) and its sample
root filesystem (Tegra_Linux_Sample-Root-Filesystem_R<rel>_aarch64.tbz2), which you
supply, made into the appliance's rootfs the way NVIDIA's quick start does:
the sample rootfs unpacked into Linux_for_Tegra/rootfs, `apply_binaries.sh` (NVIDIA's
drivers, CUDA userspace hooks, boot files), `tools/l4t_create_default_user.sh` (the
admin user, the EULA accepted non-interactively: no first-boot wizard; its password
random and never shown, and locked by the base role), and the packages the roles need
installed with the rootfs's own apt (chroot_apt). Then what the engine runs on: JetPack's
CUDA, cuDNN and TensorRT from NVIDIA's Jetson apt repository (its common/ repository and
the BSP's, t234/ for L4T 36 and som/ for 39; the sample rootfs and apply_binaries.sh
bring only the L4T BSP's own packages), and the engine's software installed offline
(rootfs/offline.py: the TensorRT-LLM wheel and its checkout). The result is cached as a
tarball keyed by the tarballs' sha256, the repository's key and every choice.

The BSP's scripts run as root on the x86 build host and need qemu-user-static for
the arm64 rootfs (binfmt.ensure sets it up). The same BSP tree later makes the flash
package (the jetson_orin target).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

from ...cache import Cache, pinned_sha256
from ...contracts import OfflineInstall
from ...errors import BuilderError, display_path
from ...progress import step
from ...rootfs import Rootfs, offline, parse_dpkg_status
from ...rootfs.binfmt import ensure, host_arch
from ...rootfs.chroot_apt import install_missing
from ...rootfs.debian import AptSource
from ...run import ToolError, run

L4T_ROOTFS_VERSION = 4  # 2: the default user's password is random, never shown; 3: JetPack;
# 4: no apt indices of the build's repository mount
JETSON_REPO = "https://repo.download.nvidia.com/jetson"
# what the BSP's nvidia-l4t-apt-source package lists on a flashed board, and its key
BSP_SOURCES = "etc/apt/sources.list.d/nvidia-l4t-apt-source.list"
BSP_KEYRING = "etc/apt/trusted.gpg.d/jetson-ota-public.asc"


@dataclass(frozen=True)
class L4tLine:
    """What the releases of one Jetson Linux line share: the Ubuntu of NVIDIA's sample
    rootfs, and NVIDIA's apt repositories for it (common/, and the BSP's own: per SoC,
    t234/, up to L4T 36; one for every module, som/, from 38)."""

    major: int
    suite: str  # Ubuntu's suite of the sample rootfs (a profile's os.suite must say it)
    ubuntu: str
    repos: tuple[str, ...]


R36 = L4tLine(36, "jammy", "22.04", ("common", "t234"))
# R39.2 (JetPack 7.2 for Orin): Ubuntu 24.04; `deb .../jetson/common r39.2 main` and
# `.../jetson/som r39.2 main` (the nvidia-l4t-apt-source_39.2.1 package's list, public
# notes, index id 69085488930; anduril/jetpack-nixos sourceinfo/debs-update.py:55-58
# reads common + som for r38/r39; OE4T meta-tegra d5d93dc6 conf/machine/include/
# tegra234.inc:25: L4T_DEB_SOCNAME = "som")
R39 = L4tLine(39, "noble", "24.04", ("common", "som"))

# GPU_STACK's words as JetPack's apt packages (its meta packages; nvidia-jetpack is all
# of it). TensorRT's Python binding is its own package. JetPack 6.0 (L4T 36.3) has
# cuDNN 8, whose meta package is nvidia-cudnn8 (NVIDIA's r36.3/r36.4 indices); JetPack
# 7.2 keeps JetPack 6's names (r39.2's index: nvidia-cuda, nvidia-cuda-dev, nvidia-cudnn,
# nvidia-tensorrt at 7.2-b184 and python3-libnvinfer 10.16.2.10-1+cuda13.2; anduril/
# jetpack-nixos sourceinfo/r39.2-debs.json, 02d22af9).
JETPACK_PACKAGES = MappingProxyType({
    "cuda-runtime": ("nvidia-cuda",), "cuda-toolkit": ("nvidia-cuda-dev",),
    "cudnn": ("nvidia-cudnn",), "tensorrt": ("nvidia-tensorrt", "python3-libnvinfer")})
JETPACK_60_PACKAGES = MappingProxyType({**JETPACK_PACKAGES, "cudnn": ("nvidia-cudnn8",)})


@dataclass(frozen=True)
class L4tRelease:
    """One Jetson Linux release this builder knows: its line, the JetPack it belongs to,
    the CUDA release JetPack's repository gives it, and JetPack's package names."""

    line: L4tLine
    jetpack: str
    cuda: str  # the Platform's (engines decide from it what they can run on)
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: JETPACK_PACKAGES)


# CUDA: cuda-cudart-12-2 12.2.140-1 in r36.3, -12-6 12.6.68-1 in r36.4, -13-2 13.2.75-1
# in r39.2 (jetpack-nixos sourceinfo r36.3/r36.4/r39.2-debs.json); 39.2.1 (JetPack 7.2.1)
# is CUDA 13.2 Update 2 (13.2.86: a board's nvcc, public notes, index id 68579880183).
L4T_RELEASES: dict[str, L4tRelease] = {
    "36.3.0": L4tRelease(R36, "6.0", "12.2", JETPACK_60_PACKAGES),
    "36.4.0": L4tRelease(R36, "6.1", "12.6"),
    "36.4.3": L4tRelease(R36, "6.2", "12.6"),
    "39.2.0": L4tRelease(R39, "7.2", "13.2"),
    "39.2.1": L4tRelease(R39, "7.2.1", "13.2"),
}


@dataclass(frozen=True)
class JetPackRepo:
    """NVIDIA's Jetson apt repository for one L4T release (suite r36.4, r39.2 ...): its
    common/ repository and the BSP's (repos)."""

    url: str  # where the build reads it: http(s):// or a local directory
    device_url: str  # what the device's apt uses
    suite: str
    keyring: Path | None  # None: the BSP's own, which apply_binaries.sh put in the rootfs
    repos: tuple[str, ...] = R36.repos

    def local_state(self) -> dict[str, str]:
        """What a local mirror serves now (its signed Release files): a mirror updated in
        place is a new rootfs. A remote repository's state is its own: see docs/orin.md."""
        if "://" in self.url:
            return {}
        return {r: pinned_sha256(Path(self.url) / r / "dists" / self.suite / "Release", None,
                                 "jetson.jetpack.url") for r in self.repos}

    def sources(self, keyring: Path) -> tuple[AptSource, ...]:
        return tuple(AptSource(name=f"nvidia-jetpack-{r}", uri=f"{self.url}/{r}",
                               suite=self.suite, components=("main",), keyring=keyring,
                               device_uri=f"{self.device_url}/{r}") for r in self.repos)
_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)")


@dataclass(frozen=True)
class L4tSpec:
    bsp: Path
    sample_rootfs: Path
    release: str  # the L4T release the profile asks for, e.g. 36.4.3
    admin_user: str
    hostname: str
    packages: list[str]  # what the roles need (missing ones are installed)
    arch: str  # Debian's name for the rootfs's architecture, and qemu-user's
    qemu: str
    bsp_sha256: str | None = None
    rootfs_sha256: str | None = None
    jetpack: JetPackRepo | None = None  # JetPack's packages come from there
    jetpack_packages: tuple[str, ...] = ()
    software: OfflineInstall | None = None  # the engine's, installed offline


def bsp_release(l4t: Path) -> str | None:
    """The BSP's release, from its nv_tegra_release line (# R36 (release), REVISION: 4.3)."""
    for candidate in (l4t / "nv_tegra/nv_tegra_release", l4t / "rootfs/etc/nv_tegra_release"):
        if candidate.is_file():
            m = _RELEASE.search(candidate.read_text(errors="replace"))
            if m:
                return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return None


def unpack_bsp(bsp: Path, work: Path, release: str, log_file: Path | None) -> Path:
    """Linux_for_Tegra/ from the BSP tarball in `work`, its release checked."""
    run(["tar", "--numeric-owner", "-xpf", bsp, "-C", work],
        what=f"unpacking the BSP {bsp.name}", log_file=log_file)
    l4t = work / "Linux_for_Tegra"
    if not (l4t / "apply_binaries.sh").is_file():
        raise BuilderError(f"{bsp.name}: no Linux_for_Tegra/apply_binaries.sh in it; give "
                           "NVIDIA's Jetson_Linux_R<release>_aarch64.tbz2")
    found = bsp_release(l4t)
    if found != release:
        raise BuilderError(f"{bsp.name} is Jetson Linux {found or 'of an unknown release'}, "
                           f"the profile asks for {release} (jetson.l4t_release)")
    return l4t


HIDDEN = "(hidden)"  # what the log shows in place of the default user's password
PASSWORD_VAR = "EDGE_LLM_DEFAULT_USER_PASSWORD"


def create_default_user(l4t: Path, user: str, hostname: str, env: Mapping[str, str],
                        log_file: Path, on_line: Callable[[str], None]) -> None:
    """NVIDIA's tools/l4t_create_default_user.sh with a random password nobody sees.

    Without -p the script makes the password from the build's second (`date +%s |
    sha256sum | base64 | head -c 8`) and prints it; with -p it prints the one given
    (R36.2: lines 72 and 220). So it gets a random one through the environment (the
    command we log says only the variable's name), and every line of its output is
    logged with that password masked. The account stays locked anyway: the base role
    locks the admin's password (it has sudo without one: a password would be root's on
    the console and the serial port)."""
    password = secrets.token_urlsafe(24)

    def masked(text: str) -> str:
        return text.replace(password, HIDDEN)

    cmd = ["sh", "-c", f'exec ./tools/l4t_create_default_user.sh -u "$1" -p "${PASSWORD_VAR}" '
           '-n "$2" --accept-license', "l4t_create_default_user.sh", user, hostname]
    with log_file.open("a", encoding="utf-8") as fh:
        fh.write(f"$ ./tools/l4t_create_default_user.sh -u {user} -p ${PASSWORD_VAR} "
                 f"-n {hostname} --accept-license\n")
        fh.flush()

        def out(line: str) -> None:
            fh.write(masked(line) + "\n")
            fh.flush()
            on_line(masked(line))

        try:
            run(cmd, cwd=l4t, env={**env, PASSWORD_VAR: password},
                what="l4t_create_default_user.sh", on_line=out)
        except ToolError as e:
            raise ToolError(f"{masked(str(e))} (log: {display_path(log_file)})") from None


def _sources(spec: L4tSpec, rootfs: Path) -> tuple[AptSource, ...]:
    """JetPack's repositories for apt, when the build installs from them. Without a key
    in the profile, the BSP's (apply_binaries.sh installs nvidia-l4t-apt-source)."""
    if not spec.jetpack or not spec.jetpack_packages:
        return ()
    keyring = spec.jetpack.keyring or rootfs / BSP_KEYRING
    if not keyring.is_file():
        raise BuilderError("jetson.jetpack.keyring: the rootfs has no "
                           f"/{BSP_KEYRING} from NVIDIA's BSP; name the key that signs "
                           "the Jetson apt repository (jetson-ota-public.asc from "
                           "repo.download.nvidia.com/jetson, or your mirror's)")
    return spec.jetpack.sources(keyring)


def build(spec: L4tSpec, cache: Cache) -> Rootfs:
    bsp_sha = pinned_sha256(spec.bsp, spec.bsp_sha256, "--l4t-bsp")
    rootfs_sha = pinned_sha256(spec.sample_rootfs, spec.rootfs_sha256, "--l4t-rootfs")
    jp = spec.jetpack
    inputs = {"l4t_rootfs_version": L4T_ROOTFS_VERSION, "bsp": bsp_sha, "rootfs": rootfs_sha,
              **{k: v for k, v in asdict(spec).items()
                 if k not in ("bsp", "sample_rootfs", "bsp_sha256", "rootfs_sha256",
                              "jetpack", "software")},
              "jetpack": jp and {"url": jp.url, "device_url": jp.device_url,
                                 "suite": jp.suite, "mirror": jp.local_state(),
                                 "keyring": jp.keyring and pinned_sha256(jp.keyring, None,
                                                                  "jetson.jetpack.keyring")},
              "software": spec.software and offline.key(spec.software)}

    def do_build(out: Path, log_file: Path) -> dict:
        work = out.parent / "work"
        work.mkdir()
        env = {"USER": "root"}  # NVIDIA's scripts check $USER, which sudo sets
        try:
            with step(f"L4T {spec.release} rootfs: apply_binaries, default user") as line:
                l4t = unpack_bsp(spec.bsp, work, spec.release, log_file)
                rootfs = l4t / "rootfs"
                rootfs.mkdir(exist_ok=True)
                run(["tar", "--numeric-owner", "-xpf", spec.sample_rootfs, "-C", rootfs],
                    what=f"unpacking the sample rootfs {spec.sample_rootfs.name}",
                    log_file=log_file, on_line=line)
                if spec.arch != host_arch():
                    ensure(spec.qemu, f"--l4t-rootfs: {spec.arch}")
                out_text = run(["./apply_binaries.sh"], cwd=l4t, env=env,
                               what="apply_binaries.sh (NVIDIA's drivers into the rootfs)",
                               log_file=log_file, on_line=line)
                if "Success!" not in out_text:
                    raise BuilderError("apply_binaries.sh ended without its 'Success!' line "
                                       f"(log: {display_path(log_file)})")
                create_default_user(l4t, spec.admin_user, spec.hostname, env, log_file,
                                    line)
                line("installing what the roles need" + (
                    f" and JetPack's {', '.join(spec.jetpack_packages)}"
                    if spec.jetpack_packages else ""))
                added = install_missing(rootfs, [*spec.packages, *spec.jetpack_packages],
                                        log_file, _sources(spec, rootfs))
                if spec.jetpack and spec.jetpack.device_url == JETSON_REPO and \
                        (rootfs / BSP_SOURCES).is_file():
                    for src in _sources(spec, rootfs):  # the BSP's entry already names
                        # them for the device (two entries with different keys stop apt)
                        (rootfs / f"etc/apt/sources.list.d/{src.name}.list").unlink(
                            missing_ok=True)
                        (rootfs / src.keyring_inside.lstrip("/")).unlink(missing_ok=True)
                if spec.software:
                    line("installing the engine's software (offline)")
                    offline.apply(rootfs, spec.software, log_file)
                run(["tar", "--numeric-owner", "-cpf", out / "rootfs.tar", "-C", rootfs, "."],
                    what="archiving the L4T rootfs", log_file=log_file)
            installed = parse_dpkg_status((rootfs / "var/lib/dpkg/status").read_text())
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        return {"packages": installed, "added": added, "l4t_release": spec.release}

    return Rootfs(cache.get_or_build("rootfs", inputs, do_build,
                                     label=f"L4T {spec.release} rootfs"))
