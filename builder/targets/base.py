"""The target interface: what one hardware family supplies to the build.

A target is a package under builder/targets/ with a `TARGET` (an instance of a Target
subclass). It names its hardware (a Platform for the engine builds), its own profile
section, its root filesystem, its boot layout and what a build delivers (a disk image
with its bmap, a flash package), how it boots in a VM for tests and how it is written
to a device. A step that does not apply says so: the hook returns None (mkosi's
steps do the same), or raises NotSupported with the reason a user reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, create_model

from ..errors import BuilderError
from ..hardware import Platform
from ..schema import Profile, TargetSettings

if TYPE_CHECKING:
    from ..build import BuildContext
    from ..rootfs import Rootfs
    from ..vm import Machine

Loc = tuple[str | int, ...]


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


class Target(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    section: ClassVar[str]  # the profile section of its own settings, e.g. "x86"
    settings: ClassVar[type[TargetSettings]]
    arches: ClassVar[tuple[str, ...]]
    engines: ClassVar[tuple[str, ...]]
    os_bases: ClassVar[tuple[str, ...]]
    storage_kinds: ClassVar[tuple[str, ...]]
    why_not: ClassVar[str]  # why an engine outside `engines` cannot run here
    vm_stages: ClassVar[tuple[str, ...]] = ()  # `builder doctor` stages `builder vm` needs

    # --- the profile ---------------------------------------------------------------
    @cached_property
    def profile_model(self) -> type[Profile]:
        """This target's profile: the shared fields, `target` fixed to its name, and
        its own section."""
        return create_model(
            f"{self.settings.__name__.removesuffix('Settings')}Profile", __base__=Profile,
            target=(Literal[self.name], Field(..., description=Profile.model_fields[
                "target"].description)),
            **{self.section: (self.settings, Field(
                default_factory=self.settings,
                description=f"Settings only a {self.name} target has."))})

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

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        """What this target writes into a build that is a pure function of the profile
        (boot configuration, partition tables), by file name: golden-tested."""
        return {}

    # --- after the build -------------------------------------------------------------
    def flash(self, build_dir: Path, manifest: dict[str, Any], request: Any) -> str:
        """Write the build to a device (`builder flash`); where it went. A disk image is
        written with bmaptool (builder/flash.py), after checking the device is safe."""
        from ..flash import Image, flash

        return flash(Image.of_build(build_dir, manifest), request)

    def vm_machine(self, build_dir: Path, manifest: dict[str, Any]) -> Machine:
        """How this build boots in QEMU for tests and `builder vm`."""
        raise NotSupported(f"{self.name}: no VM boots this target's build")

