"""NVIDIA Jetson Linux (L4T): the BSP (Jetson_Linux_R<rel>_aarch64.tbz2) and its sample
root filesystem (Tegra_Linux_Sample-Root-Filesystem_R<rel>_aarch64.tbz2), which you
supply, made into the appliance's rootfs the way NVIDIA's quick start does:
the sample rootfs unpacked into Linux_for_Tegra/rootfs, `apply_binaries.sh` (NVIDIA's
drivers, CUDA userspace hooks, boot files), `tools/l4t_create_default_user.sh` (the
admin user, the EULA accepted non-interactively: no first-boot wizard; its password
random and never shown, and locked by the base role), and the packages the roles need
installed with the rootfs's own apt (chroot_apt). The result is cached as a tarball
keyed by the two tarballs' sha256 and every choice.

The BSP's scripts run as root on the x86 build host and need qemu-user-static for
the arm64 rootfs (binfmt.ensure sets it up). The same BSP tree later makes the flash
package (the jetson_orin target).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ...cache import Cache, sha256_file
from ...errors import BuilderError, display_path
from ...progress import step
from ...rootfs import Rootfs, parse_dpkg_status
from ...rootfs.binfmt import ensure, host_arch
from ...rootfs.chroot_apt import install_missing
from ...run import ToolError, run

L4T_ROOTFS_VERSION = 2  # 2: the default user's password is random, never shown
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


def bsp_release(l4t: Path) -> str | None:
    """The BSP's release, from its nv_tegra_release line (# R36 (release), REVISION: 4.3)."""
    for candidate in (l4t / "nv_tegra/nv_tegra_release", l4t / "rootfs/etc/nv_tegra_release"):
        if candidate.is_file():
            m = _RELEASE.search(candidate.read_text(errors="replace"))
            if m:
                return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return None


def _check(path: Path, pinned: str | None, what: str) -> str:
    if not path.is_file():
        raise BuilderError(f"{what}: {display_path(path)} does not exist")
    digest = sha256_file(path)
    if pinned and digest != pinned:
        raise BuilderError(f"{what}: {display_path(path)} has sha256 {digest}, expected "
                           f"{pinned}")
    return digest


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


def build(spec: L4tSpec, cache: Cache) -> Rootfs:
    bsp_sha = _check(spec.bsp, spec.bsp_sha256, "--l4t-bsp")
    rootfs_sha = _check(spec.sample_rootfs, spec.rootfs_sha256, "--l4t-rootfs")
    inputs = {"l4t_rootfs_version": L4T_ROOTFS_VERSION, "bsp": bsp_sha, "rootfs": rootfs_sha,
              **{k: v for k, v in asdict(spec).items()
                 if k not in ("bsp", "sample_rootfs", "bsp_sha256", "rootfs_sha256")}}

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
                line("installing what the roles need")
                added = install_missing(rootfs, spec.packages, log_file)
                run(["tar", "--numeric-owner", "-cpf", out / "rootfs.tar", "-C", rootfs, "."],
                    what="archiving the L4T rootfs", log_file=log_file)
            installed = parse_dpkg_status((rootfs / "var/lib/dpkg/status").read_text())
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        return {"packages": installed, "added": added, "l4t_release": spec.release}

    return Rootfs(cache.get_or_build("rootfs", inputs, do_build,
                                     label=f"L4T {spec.release} rootfs"))
