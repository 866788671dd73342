"""Raspberry Pi 5 (BCM2712, 4x Cortex-A76 at 2.4 GHz): an arm64 appliance image as pi-gen
makes one, llama.cpp cross-built for the A76 (dotprod and fp16 arithmetic, no i8mm or
SVE, so the build names that ISA rather than a generic armv8-a).

Debian's own arm64 kernels cannot boot a Pi 5, so the kernel and boot firmware come
from Raspberry Pi's apt repository (pi5.apt: a mirror, a snapshot or a local
directory, with the key that signs it), or the image starts from a Raspberry Pi OS
Lite image you supply (os.base: raspios) whose kernel and boot files it keeps.

No QEMU emulates a Pi 5 (and its kernel has no virtio): `builder build --with-vm-image`
also puts Debian's cloud kernel and busybox in the rootfs, so the same disk image boots
in QEMU's `virt` machine with a small initramfs made on the build host, for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ...contracts import (
    ARM64_TOOLS,
    SD_WRITER,
    Delivery,
    NotSupported,
    Platform,
    Target,
    Tool,
    VendorInput,
)
from ...errors import BuilderError
from ...image import Usage, virt_boot
from ...log import log
from ...rootfs import Rootfs, debian
from ...rootfs import role_packages as roles_need
from ...schema import AptUrl, Profile, TargetSettings, _Section
from ...units import MiB, Size
from . import disk, eeprom, raspios

if TYPE_CHECKING:
    from ...contracts import BuildContext
    from ...vm import Machine

Loc = tuple[str | int, ...]

A76 = "armv8.2-a+dotprod+fp16"
RPI_ARCHIVE = "http://archive.raspberrypi.com/debian"
VM_KERNEL = "cloud-arm64"  # Debian's kernel for VMs: what the --with-vm-image test boots
KERNELS = {"2712": "kernel_2712.img", "v8": "kernel8.img"}


class RpiApt(_Section):
    url: AptUrl = Field(RPI_ARCHIVE, description="Raspberry Pi's apt repository for the kernel "
                     "and firmware packages: the archive, a lab mirror or snapshot, or a local "
                     "directory of .debs with a signed index (path or file://).")
    suite: str = Field("bookworm", description="Its suite.")
    components: list[str] = Field(default_factory=lambda: ["main"],
                                  description="Its components.")
    keyring: str | None = Field(
        None, description="OpenPGP key that signs it (raspberrypi.gpg.key, binary or "
        "armored), a path relative to the profile file. Required with os.base: debian.")
    device_url: AptUrl | None = Field(
        None, description="The repository the device's own apt uses (updates); default: "
        "url when it is http(s), else Raspberry Pi's archive.")


class BaseImage(_Section):
    path: str | None = Field(None, description="os.base raspios: a Raspberry Pi OS Lite "
                             "arm64 image (.img or .img.xz), relative to the profile file "
                             "(or --base-image).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Its sha256; the build refuses any other bytes.")


class Pi5Settings(TargetSettings):
    kernel: Literal["2712", "v8"] = Field(
        "2712", description="Raspberry Pi's kernel flavour: 2712 (Pi 5 optimised, 16 KiB "
        "pages) or v8 (generic arm64, 4 KiB pages, for software that needs them).")
    apt: RpiApt = Field(default_factory=RpiApt, description="Where the kernel and "
                        "firmware come from (os.base: debian).")
    base_image: BaseImage = Field(default_factory=BaseImage,
                                  description="The image to customise (os.base: raspios).")
    boot_size: Size = Field(512 * MiB, description="The FAT boot partition (multiple of "
                            "8MiB).")
    config_txt: list[str] = Field(
        default_factory=list, description="More config.txt lines, after the builder's own "
        "(e.g. dtparam=pciex1_gen=3, dtoverlay=...).")
    cmdline: str = Field("console=serial0,115200 console=tty1 rootfstype=ext4 "
                         "fsck.repair=yes rootwait",
                         description="cmdline.txt after root=PARTUUID=<disk id>-02.")
    compress: Literal["xz", "zst"] = Field(
        "xz", description="The compressed copy of the image: .img.xz (what Raspberry Pi "
        "Imager and the Pi world expect) or .img.zst (much faster to make).")
    eeprom: Literal["nvme-first", "leave"] = Field(
        "nvme-first", description="With device.storage.kind nvme: nvme-first puts Raspberry "
        "Pi's bootloader EEPROM update on the boot partition (made with the rpi-eeprom "
        "package, from pi5.apt or the os.base raspios image: its default release with "
        "BOOT_ORDER=0xf416, NVMe then SD then USB), which the Pi applies at its first boot, "
        "then reboots; leave keeps the Pi's EEPROM as it is.")


class RaspberryPi5(Target):
    name = "raspberry-pi5"
    description = "Raspberry Pi 5, Debian arm64, llama.cpp (armv8.2-a+dotprod+fp16)"
    section = "pi5"
    settings = Pi5Settings
    arches = ("arm64",)
    os_bases = ("debian", "raspios")
    storage_kinds = ("sd", "nvme", "usb")
    vm_stages = ("vm-arm64",)
    flash_methods = (SD_WRITER,)
    vendor_inputs = (VendorInput("base_image", "base-image", "os.base raspios: the "
                                 "Raspberry Pi OS image (.img or .img.xz) to customise "
                                 "instead of pi5.base_image.path."),)

    def platform(self, p: Profile) -> Platform:
        return Platform(arch="arm64", gnu_triplet="aarch64-linux-gnu", arm_arch=A76,
                        cpu_features=frozenset({"neon", "dotprod", "fp16"}))

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        s = self.settings_of(p)
        if s.boot_size % (8 * MiB):
            return [(("pi5", "boot_size"), "must be a multiple of 8MiB")]
        return []

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("engine", "engine-arm64", "image")

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        return {"engine-arm64": ARM64_TOOLS,
                "vm-arm64": (Tool("qemu-system-aarch64", "qemu-system-arm",
                                  "boots the image (virt)"),)}

    # --- the rootfs --------------------------------------------------------------------
    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        # Raspberry Pi's raspi-firmware (never Debian's, which rewrites config.txt): its
        # kernel hook puts kernel_2712.img, the DTBs and overlays in /boot/firmware
        return ("raspi-firmware", f"linux-image-rpi-{self.settings_of(p).kernel}",
                *self._eeprom_packages(p))

    def _eeprom_packages(self, p: Profile) -> tuple[str, ...]:
        # rpi-eeprom's own tools make the EEPROM update (eeprom.py) from its images
        return (eeprom.PACKAGE,) if self._eeprom_boot_order(p) else ()

    def _eeprom_boot_order(self, p: Profile) -> str | None:
        if p.device.storage.kind == "nvme" and self.settings_of(p).eeprom == "nvme-first":
            return eeprom.NVME_FIRST
        return None

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        p = ctx.p
        runtime = ctx.engine.rootfs_packages(p)
        vm = ("linux-image-cloud-arm64", "busybox-static") if ctx.vm_image else ()
        if p.os.base == "raspios":
            return self._from_image(ctx, [*roles_need(), *runtime, *vm, *p.os.packages,
                                          *self._eeprom_packages(p)])
        s = self.settings_of(p)
        src = ctx.device.source
        if not s.apt.keyring:
            raise BuilderError(
                f"{src.where(('pi5', 'apt'), key=True)}: pi5.apt.keyring: the key that "
                "signs Raspberry Pi's repository is needed (raspberrypi.gpg.key from "
                f"{RPI_ARCHIVE}, or your mirror's); or start from a Raspberry Pi OS image "
                "with os.base: raspios")
        keyring = src.dir_of("pi5", "apt", "keyring") / Path(s.apt.keyring).expanduser()
        if not keyring.is_file():
            raise BuilderError(f"pi5.apt.keyring: {keyring} does not exist")
        url = s.apt.url if "://" in s.apt.url else str(
            (src.dir_of("pi5", "apt", "url") / s.apt.url).resolve())
        device_url = s.apt.device_url or (url if url.startswith("http") else RPI_ARCHIVE)
        source = debian.AptSource(name="raspi", uri=url, suite=s.apt.suite,
                                  components=tuple(s.apt.components), keyring=keyring,
                                  device_uri=device_url)
        pl = ctx.device.platform
        spec = debian.from_profile(p, pl.arch, pl.gnu_triplet, boot=self.rootfs_packages(p) + vm,
                                   runtime=runtime, sources=(source,))
        return debian.build(spec, ctx.cache)

    def _from_image(self, ctx: BuildContext, packages: list[str]) -> Rootfs:
        s = self.settings_of(ctx.p)
        cli = ctx.vendor_inputs.get("base_image")
        given = cli or (ctx.device.source.dir_of("pi5", "base_image", "path") / s.base_image.path
                        if s.base_image.path else None)
        if given is None:
            raise BuilderError("os.base raspios: name the Raspberry Pi OS image with "
                               "pi5.base_image.path or --base-image")
        if not s.base_image.sha256:
            log.warning("pi5.base_image.sha256: unpinned; the build takes %s as it is",
                        given.name)
        return raspios.build(raspios.ImageSpec(
            image=Path(given), sha256=None if cli else s.base_image.sha256,
            arch="arm64", qemu="aarch64", packages=packages,
            what="--base-image" if cli else "pi5.base_image.path"), ctx.cache)

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        return {"base_fstrim": ctx.p.device.storage.kind == "nvme",
                # each medium gives itself a new disk id at first boot, cmdline.txt following
                "base_renew_disk_ids": True,
                "base_boot_partition": disk.BOOT_PARTITION,
                "base_boot_cmdline": disk.CMDLINE_TXT}

    # --- the image -----------------------------------------------------------------------
    def layout(self, p: Profile) -> disk.RpiLayout:
        s = self.settings_of(p)
        return disk.RpiLayout(kernel_image=KERNELS[s.kernel], config_txt=self.config_txt(p),
                                 cmdline=s.cmdline, boot_size=s.boot_size,
                                 compress=s.compress,
                                 eeprom_boot_order=self._eeprom_boot_order(p))

    def config_txt(self, p: Profile) -> str:
        s = self.settings_of(p)
        lines = [
            "# edge-llm appliance, Raspberry Pi 5 (written by edge-llm builder)",
            "[pi5]",
            f"kernel={KERNELS[s.kernel]}",
            "auto_initramfs=1",  # an initramfs_2712 beside the kernel is loaded if present
            "enable_uart=1",  # the serial console (cmdline.txt console=serial0)
            "disable_splash=1",
        ]
        if p.device.storage.kind == "nvme":
            lines.append("dtparam=pciex1")  # the PCIe connector, for an NVMe adapter
        lines += ["", "[all]", *s.config_txt]
        return "\n".join(lines) + "\n"

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        layout = self.layout(p)
        ids = disk.RpiIds.from_seed(seed)
        example = disk.plan_disk(Usage(bytes=1 << 30, inodes=40000), layout)
        return {"config.txt": layout.config_txt,
                "cmdline.txt": disk.cmdline_txt(ids, layout),
                "fstab": disk.fstab(ids),
                "partitions.sfdisk": disk.sfdisk_script(example, ids)}

    def assemble(self, ctx: BuildContext) -> Delivery:
        assert ctx.rootfs_dir and ctx.work
        out = ctx.work / "out"
        files: dict[str, Path] = {}
        info: dict[str, Any] = {"layout": "rpi-mbr"}
        if ctx.vm_image:  # before the boot files leave the tree: only the kernel is needed
            vb = virt_boot.make(ctx.rootfs_dir, out, flavour=VM_KERNEL,
                                log_file=ctx.logs / "image.log")
            files |= {"vm-kernel": vb.kernel, "vm-initrd": vb.initrd}
            info["vm_kernel"] = vb.version
        img = disk.make_image(ctx.rootfs_dir, out, self.layout(ctx.p),
                                 name=f"{ctx.name}.img", disk_size=ctx.p.device.storage.size,
                                 seed=ctx.release_id, log_file=ctx.logs / "image.log")
        packages = out / f"{ctx.name}.packages"
        assert ctx.rootfs
        packages.write_text("".join(f"{n} {v}\n" for n, v in ctx.rootfs.packages.items()))
        files = {"image": img.raw, "bmap": img.bmap, "compressed": img.zst,
                 "packages": packages, **files}
        return Delivery("disk-image", files, sha256=img.sha256, size=img.size,
                        info={**info, "root_partuuid": img.root_partuuid,
                              "ids_change_at_first_boot": True,
                              "kernel": img.kernel_version})

    def flash(self, build_dir: Path, manifest: dict[str, Any], built: Profile | None,
              request: Any) -> str:
        from ...flash import Image, flash  # the disk image, with bmaptool (SD_WRITER)

        return flash(Image.of_build(build_dir, manifest), request)

    def vm_machine(self, build_dir: Path, manifest: dict[str, Any]) -> Machine:
        from ...vm import Machine

        files = (manifest.get("delivery") or {}).get("files", {})
        if "vm-kernel" not in files:
            raise NotSupported(
                "raspberry-pi5: no QEMU machine emulates a Pi 5 and its kernel has no "
                "virtio; build with `builder build --with-vm-image` to get an image that "
                "also boots in QEMU's virt machine")
        kernel, initrd = build_dir / files["vm-kernel"], build_dir / files["vm-initrd"]
        return Machine(qemu="qemu-system-aarch64",
                       args=("-machine", "virt", "-kernel", str(kernel), "-initrd", str(initrd),
                             "-append", "root=/dev/vda2 rw rootwait console=ttyAMA0"),
                       tcg_cpu="cortex-a76", files=(kernel, initrd))


TARGET = RaspberryPi5()
