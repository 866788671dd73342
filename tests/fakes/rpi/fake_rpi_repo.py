"""A local, signed stand-in for Raspberry Pi's apt repository (archive.raspberrypi.com/debian).

`make_repo(dest)` lays out what a mirror of the real archive looks like for bookworm arm64:

    dest/
      raspberrypi.gpg.key                    armored public key (the real archive serves one)
      raspberrypi-archive-keyring.gpg        the same key, binary: what apt's signed-by takes
      dists/bookworm/{Release,InRelease,Release.gpg}
      dists/bookworm/main/binary-arm64/{Packages,Packages.gz,Packages.xz,Release}
      pool/main/l/linux/linux-image-6.6.74+rpt-rpi-2712_6.6.74-1+rpt1_arm64.deb ...
      pool/main/r/raspi-firmware/raspi-firmware_1.20241126-1_all.deb
      pool/main/r/raspberrypi-archive-keyring/raspberrypi-archive-keyring_2021.1.1+rpt1_all.deb
      pool/main/r/rpi-eeprom/rpi-eeprom_27.0-1_all.deb
      .signing-key.asc                       the FAKE key's secret half (for refresh())

The Release is signed with a freshly generated ed25519 test key. Packages carry the real
archive's names, versions, dependencies and file layout, with FAKE contents (see
_payloads.py and files/): the kernels are placeholder Images, the DTBs tiny valid FDTs.

Host tools: dpkg-deb (dpkg), apt-ftparchive (apt-utils), gpg + gpgconf (gnupg), gzip, xz.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..apt_repo import (
    DebSpec,
    build_deb,
    export_public,
    generate_key,
    gnupg_home,
    gpg,
    sign_release,
    write_indices,
)
from . import _eeprom as E
from . import _payloads as P

SUITE = "bookworm"
COMPONENTS = ["main"]
ARCH = "arm64"

# Release fields as archive.raspberrypi.com publishes them for bookworm (Suite was
# "stable" until trixie's release in August 2025, "oldstable" since).
RELEASE_FIELDS = {
    "Origin": "Raspberry Pi Foundation",
    "Label": "Raspberry Pi Foundation",
    "Suite": "stable",
    "Codename": SUITE,
    "Architectures": ARCH,
    "Components": " ".join(COMPONENTS),
    "Description": "FAKE Raspberry Pi Debian repository (edge-llm builder tests)",
}

KEY_UID = "Raspberry Pi Archive Signing Key (FAKE, edge-llm builder tests) <fake@example.invalid>"
MAINTAINER = "edge-llm builder fake <fake-rpi@example.invalid>"
# Fixed timestamp for reproducible packages (dpkg-deb clamps mtimes to it).
SOURCE_DATE_EPOCH = "1737936000"  # 2025-01-27T00:00:00Z, the 6.6.74-1+rpt1 upload date

KEYRING_VERSION = "2021.1.1+rpt1"
FIRMWARE_VERSION = "1:1.20241126-1"
EEPROM_VERSION = "27.0-1"  # rpi-eeprom, debian/bookworm branch, 2025-01-22

KEYRING_PATH = "usr/share/keyrings/raspberrypi-archive-keyring.gpg"
TRUSTED_PARTS_PATH = "etc/apt/trusted.gpg.d/raspberrypi-archive-stable.gpg"


@dataclass(frozen=True)
class RpiRepo:
    root: Path  # the repository's top directory (what url points at)
    url: str  # file:///.../ (use as the URI of a "deb" line)
    suite: str  # "bookworm"
    components: list[str]  # ["main"]
    keyring: Path  # binary OpenPGP keyring with the signing key (for signed-by / gpgv)
    armored_key: Path  # the same key, ASCII-armored (like raspberrypi.gpg.key)
    fingerprint: str
    packages: dict[str, str]  # package name -> version
    debs: dict[str, Path]  # package name -> .deb in pool/
    kernels: dict[str, str]  # flavour ("2712", "v8") -> kernel version

    def sources_line(self, signed_by: str | Path | None = None) -> str:
        """A one-line-style entry; signed_by defaults to this repo's keyring on the host."""
        key = self.keyring if signed_by is None else signed_by
        comps = " ".join(self.components)
        return f"deb [arch={ARCH} signed-by={key}] {self.url} {self.suite} {comps}"

    def deb822(self, signed_by: str | Path | None = None) -> str:
        key = self.keyring if signed_by is None else signed_by
        return (
            f"Types: deb\nURIs: {self.url}\nSuites: {self.suite}\n"
            f"Components: {' '.join(self.components)}\nArchitectures: {ARCH}\n"
            f"Signed-By: {key}\n"
        )

    def refresh(self) -> None:
        """Regenerate Packages and Release and sign again, after changing pool/."""
        _write_indices(self.root)
        with gnupg_home("rpi-gpg-") as home:
            gpg(home, "--import", str(self.root / ".signing-key.asc"))
            sign_release(home, self.root / "dists" / SUITE, self.fingerprint)


def _write_indices(root: Path) -> None:
    write_indices(root, SUITE, COMPONENTS, ARCH, RELEASE_FIELDS)


# --------------------------------------------------------------------------- packages


def _copyright(what: str) -> bytes:
    return (
        "FAKE package built by the edge-llm builder tests (tests/fakes/rpi).\n"
        f"It stands in for Raspberry Pi's {what} and contains no Raspberry Pi,\n"
        "Broadcom or Linux code.\n"
    ).encode()


def _keyring_spec(keyring: bytes) -> DebSpec:
    return DebSpec(
        name="raspberrypi-archive-keyring",
        version=KEYRING_VERSION,
        arch="all",
        control={
            "Maintainer": MAINTAINER,
            "Section": "misc",
            "Priority": "important",
            "Description": "GnuPG archive keys of the Raspberry Pi OS archive\n"
            " The Raspberry Pi OS archive digitally signs its Release files. This\n"
            " package contains the archive keys used for that.\n"
            " .\n"
            " FAKE: holds the edge-llm builder tests' throw-away signing key.",
        },
        files={
            KEYRING_PATH: keyring,
            TRUSTED_PARTS_PATH: keyring,
            "usr/share/doc/raspberrypi-archive-keyring/copyright": _copyright(
                "raspberrypi-archive-keyring"),
        },
        conffiles=["/" + TRUSTED_PARTS_PATH],
    )


FIRMWARE_POSTINST = """\
#!/bin/sh
# postinst of the FAKE raspi-firmware (edge-llm builder tests): like Raspberry Pi's, copies
# /usr/lib/raspi-firmware/* into /boot/firmware on arm systems, then runs the kernel and
# initramfs hooks for the RPi kernels already installed (their own postinst ran before
# the hooks existed). Honours $DPKG_ROOT (then the host architecture does not matter).
set -e
root="${DPKG_ROOT:-}"
fw="$root/boot/firmware"
case "$1" in
  configure)
    if [ -z "$root" ]; then
      case "$(dpkg --print-architecture)" in
        arm64|armhf|armel) ;;
        *) exit 0 ;;
      esac
      if command -v ischroot >/dev/null 2>&1 && ischroot; then
        :
      elif [ -x /usr/bin/systemd-detect-virt ] && systemd-detect-virt -q; then
        :
      elif ! mountpoint -q /boot/firmware; then
        echo "Error: missing /boot/firmware, did you forget to mount it?" >&2
        exit 1
      fi
    fi
    mkdir -p "$fw"
    for f in "$root"/usr/lib/raspi-firmware/*; do
      [ -f "$f" ] || continue
      cp "$f" "$fw/${f##*/}"
      sync -f "$fw/${f##*/}" 2>/dev/null || true
    done
    for img in "$root"/boot/vmlinuz-*-rpi-*; do
      [ -e "$img" ] || continue
      v="${img##*/vmlinuz-}"
      DEB_MAINT_PARAMS="configure" "$root/etc/kernel/postinst.d/z50-raspi-firmware" \\
        "$v" "/boot/vmlinuz-$v"
    done
    for rd in "$root"/boot/initrd.img-*-rpi-*; do
      [ -e "$rd" ] || continue
      v="${rd##*/initrd.img-}"
      DEB_MAINT_PARAMS="configure" "$root/etc/initramfs/post-update.d/z50-raspi-firmware" \\
        "$v" "/boot/initrd.img-$v"
    done
    ;;
esac
exit 0
"""

FIRMWARE_DEFAULTS = """\
# Configuration of the raspi-firmware kernel and initramfs hooks (FAKE package).
# KERNEL=auto copies the newest kernel of each flavour to /boot/firmware/kernel*.img;
# INITRAMFS=auto does the same for initramfs*. Anything else turns the copy off.
#KERNEL=auto
#INITRAMFS=auto
"""


def _firmware_spec() -> DebSpec:
    kernel_hook = P.hook_script("kernel")
    files = {f"usr/lib/raspi-firmware/{n}": P.firmware_blob(n) for n in P.FIRMWARE_BLOBS}
    files |= {
        "etc/kernel/postinst.d/z50-raspi-firmware": kernel_hook,
        "etc/kernel/postrm.d/z50-raspi-firmware": kernel_hook,
        "etc/initramfs/post-update.d/z50-raspi-firmware": P.hook_script("initramfs"),
        "etc/default/raspi-firmware": FIRMWARE_DEFAULTS.encode(),
        "usr/share/doc/raspi-firmware/copyright": _copyright("raspi-firmware (RPi-Distro)"),
    }
    hooks = [
        "etc/kernel/postinst.d/z50-raspi-firmware",
        "etc/kernel/postrm.d/z50-raspi-firmware",
        "etc/initramfs/post-update.d/z50-raspi-firmware",
    ]
    return DebSpec(
        name="raspi-firmware",
        version=FIRMWARE_VERSION,
        arch="all",
        control={
            "Maintainer": MAINTAINER,
            "Pre-Depends": "dpkg (>= 1.17.14)",
            "Depends": "dosfstools, rsync",
            "Suggests": "firmware-brcm80211, firmware-misc-nonfree, bluez-firmware",
            "Breaks": "linux-firmware-raspi3 (<< 1.20161123-2), raspi3-firmware (<< 1.20190718-1~)",
            "Replaces": "linux-firmware-raspi3 (<< 1.20161123-2), "
            "raspi3-firmware (<< 1.20190718-1~)",
            "Section": "non-free-firmware/misc",
            "Priority": "optional",
            "Homepage": "https://github.com/raspberrypi/firmware",
            "Description": "Raspberry Pi family GPU firmware and bootloaders\n"
            " This package contains all the proprietary files necessary to boot a\n"
            " Raspberry Pi board.\n"
            " .\n"
            " FAKE: placeholder blobs and re-implemented kernel/initramfs hooks.",
        },
        files=files,
        modes={h: 0o755 for h in hooks},
        scripts={"postinst": FIRMWARE_POSTINST},
        conffiles=["/" + h for h in [*hooks, "etc/default/raspi-firmware"]],
    )


EEPROM_SERVICE = """\
[Unit]
Description=Check for Raspberry Pi EEPROM updates
After=boot-firmware.mount

[Service]
Type=oneshot
RemainAfterExit=true
ExecStart=/usr/bin/rpi-eeprom-update -s -a

[Install]
WantedBy=multi-user.target
"""


def _eeprom_spec(chips: tuple[str, ...] = ("2711", "2712")) -> DebSpec:
    """rpi-eeprom as rpi-eeprom 27.0-1 lays it out (debian/bookworm: debian/control,
    debian/rpi-eeprom.install, debian/default/rpi-eeprom-update): the tools in /usr/bin,
    each chip's release directories under /usr/lib/firmware/raspberrypi/bootloader-<chip>/
    (default/ and latest/ hold the images and recovery.bin; critical -> default, stable
    and beta -> latest), /etc/default/rpi-eeprom-update choosing the default release."""
    tools = ("rpi-eeprom-config", "rpi-eeprom-digest", "rpi-eeprom-update")
    files = {f"usr/bin/{t}": (P.FILES_DIR / t).read_bytes() for t in tools}
    links: dict[str, str] = {}
    for chip in chips:
        base = f"usr/lib/firmware/raspberrypi/bootloader-{chip}"
        name = E.RELEASES[chip][0]
        for release in ("default", "latest"):
            files[f"{base}/{release}/{name}"] = E.pieeprom(chip)
            files[f"{base}/{release}/recovery.bin"] = E.recovery_bin(chip)
        links |= {f"{base}/critical": "default", f"{base}/stable": "latest",
                  f"{base}/beta": "latest"}
    files |= {
        "etc/default/rpi-eeprom-update": b'FIRMWARE_RELEASE_STATUS="default"\n',
        # debian/rpi-eeprom.rpi-eeprom-update.service, installed by dh_installsystemd
        "lib/systemd/system/rpi-eeprom-update.service": EEPROM_SERVICE.encode(),
        "usr/share/doc/rpi-eeprom/copyright": _copyright("rpi-eeprom"),
    }
    return DebSpec(
        name="rpi-eeprom",
        version=EEPROM_VERSION,
        arch="all",
        control={
            "Maintainer": MAINTAINER,
            "Depends": "raspi-utils, python3, binutils, pciutils, python3-pycryptodome",
            "Recommends": "flashrom",
            "Breaks": "rpi-eeprom-images (<<7.2)",
            "Replaces": "rpi-eeprom-images (<<7.2)",
            "Provides": "rpi-eeprom-images",
            "Section": "misc",
            "Priority": "optional",
            "Homepage": "https://github.com/raspberrypi/rpi-eeprom/",
            "Description": "Raspberry Pi 4/5 boot EEPROM updater\n"
            " Checks whether the Raspberry Pi bootloader EEPROM is up-to-date and updates\n"
            " the EEPROM.\n"
            " .\n"
            " FAKE: placeholder bootloader images in the real format and re-implemented\n"
            " rpi-eeprom-config and rpi-eeprom-digest.",
        },
        files=files,
        modes={f"usr/bin/{t}": 0o755 for t in tools},
        links=links,
        conffiles=["/etc/default/rpi-eeprom-update"],
    )


KERNEL_PREINST = """\
#!/bin/sh
# preinst of the FAKE {pkg} (edge-llm builder tests), shaped like Debian's.
set -e
version={version}
image_path=/boot/vmlinuz-$version
root="${{DPKG_ROOT:-}}"
if [ "$1" = install ]; then
  mkdir -p "$root/lib/modules/$version"
  touch "$root/lib/modules/$version/.fresh-install"
fi
if [ -d "$root/etc/kernel/preinst.d" ]; then
  DEB_MAINT_PARAMS="$*" run-parts --report --exit-on-error --arg="$version" \\
    --arg="$image_path" "$root/etc/kernel/preinst.d"
fi
exit 0
"""

KERNEL_POSTINST = """\
#!/bin/sh
# postinst of the FAKE {pkg} (edge-llm builder tests): what Debian's and Raspberry Pi's
# kernel packages do: depmod, the /vmlinuz symlinks, then every /etc/kernel/postinst.d hook
# (initramfs-tools builds the initrd there, raspi-firmware fills /boot/firmware).
set -e
version={version}
image_path=/boot/vmlinuz-$version
root="${{DPKG_ROOT:-}}"
[ "$1" = configure ] || exit 0
if command -v depmod >/dev/null 2>&1; then
  depmod -b "${{root:-/}}" "$version"
fi
if [ -f "$root/lib/modules/$version/.fresh-install" ]; then
  change=install
else
  change=upgrade
fi
if [ -z "$root" ] && command -v linux-update-symlinks >/dev/null 2>&1; then
  linux-update-symlinks "$change" "$version" "$image_path"
fi
rm -f "$root/lib/modules/$version/.fresh-install"
if [ -d "$root/etc/kernel/postinst.d" ]; then
  DEB_MAINT_PARAMS="$*" run-parts --report --exit-on-error --arg="$version" \\
    --arg="$image_path" "$root/etc/kernel/postinst.d"
fi
exit 0
"""

KERNEL_PRERM = """\
#!/bin/sh
# prerm of the FAKE {pkg} (edge-llm builder tests), shaped like Debian's.
set -e
version={version}
image_path=/boot/vmlinuz-$version
root="${{DPKG_ROOT:-}}"
[ "$1" = remove ] || exit 0
if [ -d "$root/etc/kernel/prerm.d" ]; then
  DEB_MAINT_PARAMS="$*" run-parts --report --exit-on-error --arg="$version" \\
    --arg="$image_path" "$root/etc/kernel/prerm.d"
fi
exit 0
"""

KERNEL_POSTRM = """\
#!/bin/sh
# postrm of the FAKE {pkg} (edge-llm builder tests): the /etc/kernel/postrm.d hooks
# (raspi-firmware removes kernel*.img when the last kernel of a flavour goes).
set -e
version={version}
image_path=/boot/vmlinuz-$version
root="${{DPKG_ROOT:-}}"
rm -f "$root/lib/modules/$version/.fresh-install"
if [ "$1" != upgrade ] && [ -z "$root" ] && command -v linux-update-symlinks >/dev/null 2>&1; then
  linux-update-symlinks remove "$version" "$image_path"
fi
if [ -d "$root/etc/kernel/postrm.d" ]; then
  DEB_MAINT_PARAMS="$*" run-parts --report --exit-on-error --arg="$version" \\
    --arg="$image_path" "$root/etc/kernel/postrm.d"
fi
if [ "$1" = purge ]; then
  for extra_file in modules.dep modules.dep.bin modules.alias modules.alias.bin \\
      modules.symbols modules.symbols.bin modules.softdep modules.devname \\
      modules.builtin.bin modules.builtin.alias.bin; do
    rm -f "$root/lib/modules/$version/$extra_file"
  done
  rmdir "$root/lib/modules/$version" 2>/dev/null || true
fi
exit 0
"""


def _kernel_specs(flavour: str) -> list[DebSpec]:
    version = P.kernel_version(flavour)
    pkg = f"linux-image-{version}"
    series = ".".join(P.KERNEL_UPSTREAM.split(".")[:2])
    what = f"Raspberry Pi {flavour}"
    base = f"usr/lib/linux-image-{version}"
    files: dict[str, bytes] = {
        f"boot/vmlinuz-{version}": P.kernel_image(version, flavour),
        f"boot/config-{version}": P.kernel_config(version, flavour).encode(),
        f"boot/System.map-{version}": P.system_map(version).encode(),
        f"lib/modules/{version}/modules.order": b"",
        f"lib/modules/{version}/modules.builtin": b"",
        f"lib/modules/{version}/modules.builtin.modinfo": b"",
        f"usr/share/doc/{pkg}/copyright": _copyright(f"{pkg} (raspberrypi/linux)"),
    }
    files |= {f"{base}/broadcom/{n}": b for n, b in P.dtb_files().items()}
    files |= {f"{base}/overlays/{n}": b for n, b in P.overlay_files().items()}
    fmt = {"pkg": pkg, "version": version}
    image = DebSpec(
        name=pkg,
        version=P.KERNEL_DEB_VERSION,
        arch=ARCH,
        control={
            "Maintainer": MAINTAINER,
            "Source": f"linux ({P.KERNEL_DEB_VERSION})",
            "Depends": "kmod, linux-base (>= 4.3~), "
            "initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool",
            "Recommends": "firmware-linux-free, apparmor",
            "Suggests": f"linux-doc-{series}, debian-kernel-handbook",
            "Section": "kernel",
            "Priority": "optional",
            "Homepage": "https://github.com/raspberrypi/linux",
            "Description": f"Linux {series} for {what}, Raspberry Pi\n"
            f" The Linux kernel {series} and modules for use on {what} systems.\n"
            " .\n"
            " FAKE: edge-llm builder test stand-in; the image is a placeholder\n"
            " and the DTBs describe no real hardware.",
        },
        files=files,
        dirs=[f"lib/modules/{version}/kernel"],
        scripts={
            "preinst": KERNEL_PREINST.format(**fmt),
            "postinst": KERNEL_POSTINST.format(**fmt),
            "prerm": KERNEL_PRERM.format(**fmt),
            "postrm": KERNEL_POSTRM.format(**fmt),
        },
    )
    meta = DebSpec(
        name=f"linux-image-rpi-{flavour}",
        version=P.KERNEL_DEB_VERSION,
        arch=ARCH,
        control={
            "Maintainer": MAINTAINER,
            "Source": f"linux ({P.KERNEL_DEB_VERSION})",
            "Depends": f"{pkg} (= {P.KERNEL_DEB_VERSION})",
            "Section": "kernel",
            "Priority": "optional",
            "Homepage": "https://github.com/raspberrypi/linux",
            "Description": f"Linux for {what} (meta-package)\n"
            f" This package depends on the latest Linux kernel and modules for use on\n"
            f" {what} systems.\n"
            " .\n"
            " FAKE: edge-llm builder test stand-in.",
        },
        files={f"usr/share/doc/linux-image-rpi-{flavour}/copyright": _copyright(
            f"linux-image-rpi-{flavour}")},
    )
    return [image, meta]


# --------------------------------------------------------------------------- entry point


def make_repo(dest: Path, eeprom_chips: tuple[str, ...] = ("2711", "2712")) -> RpiRepo:
    """Build the fake, signed Raspberry Pi apt repository in `dest` (created if missing).
    `eeprom_chips`: the chips rpi-eeprom ships bootloader images for (a repository whose
    package lacks one, to see the build refuse it).

    Takes a second or two; writes nothing outside `dest` (a throw-away GNUPGHOME in /tmp is
    removed before returning).
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / ".build"
    work.mkdir(exist_ok=True)
    try:
        with gnupg_home("rpi-gpg-") as home:
            fpr = generate_key(home, KEY_UID)
            keyring, armored = export_public(home, fpr)
            secret = gpg(home, "--armor", "--export-secret-keys", fpr)
            (dest / "raspberrypi-archive-keyring.gpg").write_bytes(keyring)
            (dest / "raspberrypi.gpg.key").write_text(armored)
            (dest / ".signing-key.asc").write_text(secret)
            os.chmod(dest / ".signing-key.asc", 0o600)

            specs = [_keyring_spec(keyring), _firmware_spec(), _eeprom_spec(eeprom_chips)]
            for flavour in P.FLAVOURS:
                specs += _kernel_specs(flavour)
            debs: dict[str, Path] = {}
            for spec in specs:
                debs[spec.name] = build_deb(spec, dest / spec.pool_dir(), work,
                                            SOURCE_DATE_EPOCH)

            _write_indices(dest)
            sign_release(home, dest / "dists" / SUITE, fpr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return RpiRepo(
        root=dest,
        url=dest.as_uri() + "/",
        suite=SUITE,
        components=list(COMPONENTS),
        keyring=dest / "raspberrypi-archive-keyring.gpg",
        armored_key=dest / "raspberrypi.gpg.key",
        fingerprint=fpr,
        packages={s.name: s.version for s in specs},
        debs=debs,
        kernels={f: P.kernel_version(f) for f in P.FLAVOURS},
    )
