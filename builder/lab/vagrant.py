"""`builder vagrant-box`: a build as a vagrant-libvirt box, for the lab's Vagrantfile
(the repository's top-level one): `vagrant up` boots our own image under libvirt/QEMU
and provisions it with playbooks/appliance.yml, then `builder verify` checks it.

A vagrant-libvirt box (format v1, vagrant-libvirt docs/boxes and
tools/create_box.sh) is a tar of:

    metadata.json   {"provider": "libvirt", "format": "qcow2", "virtual_size": GiB}
    box.img         the disk image, qcow2
    Vagrantfile     the provider settings a machine booting it needs

The provider settings come from the target's QEMU machine (Target.vm_machine, the one
`builder vm` boots): its board, firmware (UEFI for a GPT image) or direct kernel boot
(a kernel and initramfs from the build travel inside the box, beside box.img). KVM is
used when the host has it and the machine can use it, TCG otherwise (decided at
`vagrant up`, in the box's Vagrantfile).

The tar is not compressed: box.img is qcow2, which holds only the image's allocated
clusters, and `vagrant box add` unpacks the box once; compressing several GiB on the
build host would cost minutes for a one-time local copy.

Beside the box, OUT/<profile>/vagrant-vars.yml holds the variables the Vagrantfile's
Ansible provisioner passes to playbooks/appliance.yml: the build's own (its manifest's
provision_vars), for a live machine instead of an image; every string marked !unsafe,
as every extra-vars file the builder writes (values, never templates).
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contracts import Target
from ..errors import BuilderError, display_path
from ..provision import unsafe_yaml
from ..run import run
from ..units import GiB
from ..vm import Machine

BOX_FILE = "vagrant-libvirt.box"
VARS_FILE = "vagrant-vars.yml"
BOX_PREFIX = "edge-llm/"  # box names: edge-llm/<profile>, as the Vagrantfile names them


@dataclass(frozen=True)
class Box:
    """What a box is made of: the disk, the provider settings, files it carries."""

    image: Path  # the raw disk image of the build
    virtual_size: int  # bytes
    vagrantfile: str
    files: dict[str, Path]  # box member -> file of the build (a kernel, an initramfs)


# --- pure: a QEMU machine as vagrant-libvirt settings -------------------------------------

def _ruby(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Ruby string literal


def provider_settings(machine: Machine, build_dir: Path) -> tuple[list[str], dict[str, Path]]:
    """The libvirt provider lines (Ruby, inside `provider :libvirt do |lv|`) of a QEMU
    machine, and the files of the build the box must carry for it. Files outside the
    build (firmware) are the host's, named by their path."""
    arch = machine.qemu.removeprefix("qemu-system-")
    lines = [f"lv.machine_arch = {_ruby(arch)}",
             f"lv.emulator_path = {_ruby('/usr/bin/' + machine.qemu)}"]
    files: dict[str, Path] = {}
    options = {"-machine": "machine_type", "-bios": "loader", "-kernel": "kernel",
               "-initrd": "initrd", "-append": "cmd_line"}
    args = list(machine.args)
    if len(args) % 2:
        raise BuilderError(f"the target's QEMU machine ({' '.join(args)}) is not pairs of "
                           "option and value; vagrant-libvirt cannot express it")
    for flag, value in zip(args[::2], args[1::2], strict=True):
        setting = options.get(flag)
        if setting is None:
            raise BuilderError(f"the target's QEMU machine uses {flag} {value}, which has "
                               "no vagrant-libvirt setting; boot it with `builder vm`")
        path = Path(value)
        if setting in ("loader", "kernel", "initrd") and path.is_relative_to(build_dir):
            files[path.name] = path
            lines.append(f"lv.{setting} = File.join(box, {_ruby(path.name)})")
        else:
            lines.append(f"lv.{setting} = {_ruby(value)}")
    # QEMU's -cpu MODEL[,+feature,-feature...]; "max" is a mode of its own in libvirt
    model, *features = machine.tcg_cpu.split(",")
    tcg = ([f"lv.cpu_mode = {_ruby('maximum')}"] if model == "max" else
           [f"lv.cpu_mode = {_ruby('custom')}", f"lv.cpu_model = {_ruby(model)}"])
    tcg += [f"lv.cpu_feature :name => {_ruby(f[1:])}, :policy => "
            f"{_ruby('disable' if f[0] == '-' else 'require')}" for f in features]
    if machine.kvm:
        lines += [f"kvm = File.exist?(\"/dev/kvm\") && RbConfig::CONFIG[\"host_cpu\"] == "
                  f"{_ruby(arch)}",
                  'lv.driver = kvm ? "kvm" : "qemu"',
                  "if kvm",
                  '  lv.cpu_mode = "host-passthrough"',
                  "else",
                  *(f"  {t}" for t in tcg),
                  "end"]
    else:
        lines += ['lv.driver = "qemu"', *tcg]
    # a headless appliance: its console is the serial port, as under `builder vm`
    lines += ['lv.graphics_type = "none"', 'lv.video_type = "none"',
              'lv.disk_bus = "virtio"', 'lv.nic_model_type = "virtio"']
    return lines, files


def box_vagrantfile(profile: str, release_id: str, lines: list[str]) -> str:
    body = "".join(f"    {ln}\n" for ln in lines)
    return (f"# edge-llm box: {profile} (release {release_id}), made by `builder vagrant-box`.\n"
            "# How a machine boots this image under libvirt (the target's QEMU machine, as\n"
            "# `builder vm` boots it); merged under the lab's Vagrantfile.\n"
            "box = __dir__  # where the box is unpacked (its kernel and initramfs, if any)\n"
            "\n"
            'Vagrant.configure("2") do |config|\n'
            "  config.vm.provider :libvirt do |lv|\n"
            f"{body}"
            "  end\n"
            "end\n")


def metadata(virtual_size: int) -> dict[str, Any]:
    """vagrant-libvirt's box metadata: virtual_size in whole GiB, rounded up."""
    return {"provider": "libvirt", "format": "qcow2",
            "virtual_size": max(1, math.ceil(virtual_size / GiB))}


def provision_vars(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the Vagrantfile's Ansible provisioner passes to playbooks/appliance.yml: the
    build's own variables, for a live machine (the appliance playbook over SSH)."""
    pv = manifest.get("provision_vars")
    if not pv:
        raise BuilderError("the build's manifest.json has no provision_vars; build again")
    return {**pv, "edge_llm_image_build": False,
            "ansible_python_interpreter": "/usr/bin/python3"}


# --- the box --------------------------------------------------------------------------

def plan(build_dir: Path, target: Target) -> tuple[Box, dict[str, Any]]:
    """The box of the build in `build_dir` (OUT/<profile>/) of `target`, and the build's
    manifest."""
    from .. import vm

    build_dir = build_dir.resolve()
    spec = vm.for_build(build_dir, target.vm_machine, ssh_port=0, state_dir=build_dir)
    m = json.loads((build_dir / "manifest.json").read_text())
    if not spec.image.is_file():
        raise BuilderError(f"{display_path(spec.image)} is missing; build again")
    lines, files = provider_settings(spec.machine, build_dir)
    for f in files.values():
        if not f.is_file():
            raise BuilderError(f"{display_path(f)} is missing; build again")
    vf = box_vagrantfile(m.get("profile", build_dir.name), m.get("release_id", "?"), lines)
    return Box(spec.image, spec.image.stat().st_size, vf, files), m


def pack(build_dir: Path, target: Target, dest: Path, *,
         log_file: Path | None = None) -> Box:
    """OUT/<profile>/vagrant-libvirt.box (written beside and renamed) and
    vagrant-vars.yml."""
    build_dir = build_dir.resolve()
    box, m = plan(build_dir, target)
    dest = dest.resolve()
    work = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        img = work / "box.img"
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", box.image, img],
            what=f"converting {display_path(box.image)} to qcow2 (qemu-img)", log_file=log_file)
        tmp = work / dest.name
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in (("metadata.json", json.dumps(metadata(box.virtual_size),
                                                            indent=2) + "\n"),
                               ("Vagrantfile", box.vagrantfile)):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = len(data.encode()), 0o644, 0
                tf.addfile(ti, io.BytesIO(data.encode()))
            tf.add(img, "box.img")
            for name, src in box.files.items():
                tf.add(src, name)
        os.replace(tmp, dest)
        (work / VARS_FILE).write_text(unsafe_yaml(provision_vars(m)))
        os.replace(work / VARS_FILE, build_dir / VARS_FILE)
    except OSError as e:
        raise BuilderError(f"{display_path(dest)}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return box


def add_command(profile: str, box_file: Path) -> str:
    return shlex.join(["vagrant", "box", "add", "--force", "--name", BOX_PREFIX + profile,
                       str(box_file)])
