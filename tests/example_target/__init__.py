"""An example target, outside the builder: everything a new hardware family supplies,
in one package (plus a profile). `tests/test_example_target.py` loads it through
EDGE_LLM_TARGETS and drives the real commands with it, which proves that adding a
family touches nothing else.

The "example board" is an x86-64 box whose vendor flashes a root filesystem archive
itself: it takes the Debian rootfs (the same one an x86 gateway gets, so the test
shares that cached tree) and delivers the provisioned tree as a .tar.zst.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from builder.cache import sha256_file
from builder.contracts import Delivery, Platform, Target
from builder.rootfs import Rootfs, debian
from builder.run import run
from builder.schema import Profile, TargetSettings

if TYPE_CHECKING:
    from builder.contracts import BuildContext


class ExampleSettings(TargetSettings):
    archive_name: str = Field("rootfs.tar.zst", description="Name of the delivered archive.")


class ExampleBoard(Target):
    name = "example-board"
    description = "An example board: x86-64, llama.cpp, a rootfs archive"
    section = "example"
    settings = ExampleSettings
    arches = ("amd64",)
    os_bases = ("debian",)
    storage_kinds = ("emmc",)

    def platform(self, p: Profile) -> Platform:
        return Platform(arch="amd64", gnu_triplet="x86_64-linux-gnu",
                        x86_levels=("x86-64-v2", "x86-64-v3"),
                        cpu_features=frozenset({"sse4.2", "avx2"}))

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("engine", "image")

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        return ("linux-image-amd64", "initramfs-tools", "systemd-boot-efi")

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        p, pl = ctx.p, ctx.device.platform
        return debian.build(debian.from_profile(p, pl.arch, pl.gnu_triplet,
                                                boot=self.rootfs_packages(p),
                                                runtime=ctx.engine.rootfs_packages(p)),
                            ctx.cache)

    def assemble(self, ctx: BuildContext) -> Delivery:
        assert ctx.rootfs_dir and ctx.work
        out = ctx.work / "out"
        out.mkdir(exist_ok=True)
        archive = out / self.settings_of(ctx.p).archive_name
        run(["tar", "--numeric-owner", "--zstd", "-cf", archive, "-C", ctx.rootfs_dir, "."],
            what="archiving the rootfs", log_file=ctx.logs / "archive.log")
        return Delivery("rootfs-archive", {"archive": archive}, sha256=sha256_file(archive),
                        size=archive.stat().st_size)

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        return {"archive-name": self.settings_of(p).archive_name + "\n"}


TARGET = ExampleBoard()
