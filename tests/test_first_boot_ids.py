"""Every medium gets its own disk ids at an image's first boot (the base role's
edge-llm-disk-ids): the script run on a disk image file laid out as each target lays its
image out, with the boot partition's files and the root tree in directories. A power cut
after any step must leave a medium that boots (the command line and fstab name each
partition by a name that resolves: its kernel name, or a PARTUUID in the table) and a
re-run must finish with the command line, fstab and table agreeing on new ids; a
finished medium and a live host (no pending mark) are left as they are.

The slow test boots the x86-gateway image twice in QEMU (one VM, rebooted): new ids
after the first boot, the same after the second."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from host_tools import PATH, need

from builder.image import Usage, uefi_gpt
from builder.provision import roles_path
from builder.targets.raspberry_pi5 import disk as rpi
from builder.units import MiB

ROLE = Path(roles_path().split(":")[0]) / "base"
SCRIPT = ROLE / "files/edge-llm-disk-ids"
STEPS = 5  # the script's: plan, by name, table, command line, fstab
X86_LAYOUT = uefi_gpt.UefiLayout(root_type=uefi_gpt.ROOT_X86_64_TYPE, efi_loader="-",
                                 efi_name="BOOTX64.EFI", kernel_cmdline="console=ttyS0 quiet",
                                 esp_size=64 * MiB)
RPI_LAYOUT = rpi.RpiLayout(kernel_image="kernel_2712.img", config_txt="",
                           cmdline="console=serial0,115200 rootwait", boot_size=64 * MiB)
SMALL = Usage(bytes=8 * MiB, inodes=1000)


def sfdisk(*args: str | Path, input: str | None = None) -> str:
    r = subprocess.run(["sfdisk", *map(str, args)], input=input, capture_output=True,
                       text=True, env={"PATH": PATH, "LC_ALL": "C"}, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@dataclass
class Medium:
    """A disk image file with the target's table, its boot partition's files and its root
    tree, as the image build leaves them."""

    disk: Path
    boot: Path  # the boot partition's files
    root: Path  # the root tree
    cmdline_rel: str
    fstab_mounts: dict[str, int]  # mount point -> partition number

    @property
    def cmdline(self) -> Path:
        return self.boot / self.cmdline_rel

    @property
    def pending(self) -> Path:
        return self.root / "var/lib/edge-llm/disk-ids.pending"

    def dev(self, n: int) -> str:
        return f"{self.disk}{n}"  # how sfdisk names a file's partitions

    def run(self, cut_after: int | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": PATH, "LC_ALL": "C", "EDGE_LLM_ROOT": str(self.root),
               "EDGE_LLM_DISK": str(self.disk), "EDGE_LLM_ROOT_DEVICE": self.dev(2),
               "EDGE_LLM_BOOT_DIR": str(self.boot),
               "EDGE_LLM_BOOT_PARTITION": str(1), "EDGE_LLM_BOOT_CMDLINE": self.cmdline_rel}
        if cut_after is not None:
            env["EDGE_LLM_DISK_IDS_CUT_AFTER"] = str(cut_after)
        return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=60)

    def partuuids(self) -> dict[int, str]:
        """Partition number -> PARTUUID, as the kernel and udev read them from the table."""
        pt = json.loads(sfdisk("--json", self.disk))["partitiontable"]
        number = {p["node"]: int(p["node"].removeprefix(str(self.disk)))
                  for p in pt["partitions"]}
        if pt["label"] == "dos":
            disk_id = pt["id"].removeprefix("0x").lower()
            return {number[p["node"]]: f"{disk_id}-{number[p['node']]:02d}"
                    for p in pt["partitions"]}
        return {number[p["node"]]: p["uuid"].lower() for p in pt["partitions"]}

    def names(self) -> dict[int, set[str]]:
        """Each partition's names that resolve now: its kernel name, its PARTUUID."""
        return {n: {self.dev(n), f"PARTUUID={u}", f"/dev/disk/by-partuuid/{u}"}
                for n, u in self.partuuids().items()}

    def root_arg(self) -> str:
        m = re.findall(r"\broot=(\S+)", self.cmdline.read_text())
        assert len(m) == 1, self.cmdline.read_text()
        return m[0]

    def fstab_sources(self) -> dict[str, str]:
        return {fields[1]: fields[0] for fields in map(str.split, (
            self.root / "etc/fstab").read_text().splitlines())
            if fields and not fields[0].startswith("#") and fields[1] in self.fstab_mounts}

    def assert_boots(self) -> None:
        """The command line's root= and each fstab mount name their partition by a name
        that resolves against the table as it is."""
        names = self.names()
        assert self.root_arg() in names[2], (self.root_arg(), names)
        sources = self.fstab_sources()
        assert set(sources) == set(self.fstab_mounts)
        for mount, n in self.fstab_mounts.items():
            assert sources[mount] in names[n], (mount, sources[mount], names)

    def snapshot(self) -> tuple[bytes, str, str]:
        with self.disk.open("rb") as f:
            table = f.read(34 * 512)
            f.seek(-33 * 512, 2)
            table += f.read()
        return table, self.cmdline.read_text(), (self.root / "etc/fstab").read_text()


def _medium(tmp_path: Path, label: str) -> Medium:
    need("sfdisk")
    disk = tmp_path / "disk.img"
    boot, root = tmp_path / "boot", tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "var/lib/edge-llm").mkdir(parents=True)
    if label == "gpt":  # the x86 gateway's layout and files
        ids = uefi_gpt.GptIds.from_seed("release-1")
        plan = uefi_gpt.plan_disk(SMALL, X86_LAYOUT)
        table = uefi_gpt.sfdisk_script(plan, ids, X86_LAYOUT)
        size, rel = plan.disk_size, uefi_gpt.LOADER_ENTRY
        cmdline = uefi_gpt.boot_entry(ids.root_partuuid, X86_LAYOUT.kernel_cmdline)
        fstab = ("# /etc/fstab: static file system information.\n"
                 f"PARTUUID={ids.esp_partuuid} /boot/efi vfat umask=0077 0 1\n")
        mounts = {"/boot/efi": uefi_gpt.ESP_PARTITION}
    else:  # the Raspberry Pi's
        ids_r = rpi.RpiIds.from_seed("release-1")
        plan_r = rpi.plan_disk(SMALL, RPI_LAYOUT)
        table = rpi.sfdisk_script(plan_r, ids_r)
        size, rel = plan_r.disk_size, rpi.CMDLINE_TXT
        cmdline, fstab = rpi.cmdline_txt(ids_r, RPI_LAYOUT), rpi.fstab(ids_r)
        mounts = {"/boot/firmware": rpi.BOOT_PARTITION, "/": 2}
    with disk.open("wb") as f:
        f.truncate(size)
    sfdisk("-q", disk, input=table)
    (boot / rel).parent.mkdir(parents=True)
    (boot / rel).write_text(cmdline)
    (root / "etc/fstab").write_text(fstab)
    m = Medium(disk, boot, root, rel, mounts)
    m.pending.touch()  # the image build's mark
    return m


@pytest.fixture(params=["gpt", "dos"])
def medium(request: pytest.FixtureRequest, tmp_path: Path) -> Medium:
    return _medium(tmp_path, request.param)


def _finished(m: Medium, image: dict[int, str]) -> dict[int, str]:
    """The medium is done: new ids everywhere, named by PARTUUID, the mark gone."""
    got = m.partuuids()
    assert not m.pending.exists()
    assert set(got) == set(image) and all(got[n] != image[n] for n in got)
    assert m.root_arg() == f"PARTUUID={got[2]}"
    for mount, source in m.fstab_sources().items():
        assert source == f"PARTUUID={got[m.fstab_mounts[mount]]}"
    m.assert_boots()
    return got


def test_a_medium_gets_new_ids_and_its_command_line_and_fstab_follow(medium: Medium):
    image = medium.partuuids()
    medium.assert_boots()
    r = medium.run()
    assert r.returncode == 0, r.stderr
    new = _finished(medium, image)
    # the command line keeps everything but the root's name
    assert medium.cmdline.read_text().replace(new[2], image[2]) == \
        (medium.root / "var/lib/edge-llm/disk-ids/cmdline.orig").read_text()


@pytest.mark.parametrize("cut", range(1, STEPS + 1))
def test_a_cut_after_any_step_still_boots_and_the_next_boot_finishes(medium: Medium,
                                                                      cut: int):
    image = medium.partuuids()
    r = medium.run(cut_after=cut)
    assert r.returncode == 75 and f"cut after step {cut}" in r.stdout, r.stdout + r.stderr
    assert medium.pending.exists()  # the unit runs again at the next boot
    medium.assert_boots()
    if cut in (2, 3):  # between the table and the new ids: by kernel name meanwhile
        assert medium.root_arg() == medium.dev(2)
    r = medium.run()
    assert r.returncode == 0, r.stderr
    _finished(medium, image)


def test_a_cut_inside_the_table_step_still_boots_and_finishes(tmp_path: Path):
    """GPT ids are written one sfdisk call at a time: a cut between them leaves some new
    and some old, which nothing names meanwhile."""
    m = _medium(tmp_path, "gpt")
    image = m.partuuids()
    assert m.run(cut_after=2).returncode == 75
    state = (m.root / "var/lib/edge-llm/disk-ids/state").read_text()
    new_root = re.search(r"^part 2 \S+ \S+ (\S+)$", state, re.M).group(1)
    sfdisk("--part-uuid", m.disk, "2", new_root)
    m.assert_boots()
    assert m.run().returncode == 0
    assert _finished(m, image)[2] == new_root


def test_a_table_written_back_with_the_old_ids_is_renewed_before_the_command_line(
        tmp_path: Path):
    """A tool that dumped the table before step 3 and writes it back after (growpart
    does so, hence the unit's ordering) must not leave the command line naming ids the
    table no longer has."""
    m = _medium(tmp_path, "dos")
    image = m.partuuids()
    old_table = sfdisk("--dump", m.disk)
    assert m.run(cut_after=3).returncode == 75
    sfdisk("-q", "--no-reread", m.disk, input=old_table)
    assert m.partuuids() == image
    r = m.run()
    assert r.returncode == 0 and "lost the new ids" in r.stdout, r.stdout + r.stderr
    _finished(m, image)


def test_a_finished_medium_is_left_as_it_is(medium: Medium):
    assert medium.run().returncode == 0
    before = medium.snapshot()
    medium.pending.touch()  # even if the mark came back: the recorded plan is done
    r = medium.run()
    assert r.returncode == 0, r.stderr
    assert medium.snapshot() == before
    assert not medium.pending.exists()
    r = medium.run()  # the unit's usual case: no mark
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert medium.snapshot() == before


def test_a_live_host_keeps_its_ids(medium: Medium):
    """A host Ansible configures over SSH never has the mark: nothing changes."""
    medium.pending.unlink()
    before = medium.snapshot()
    r = medium.run()
    assert r.returncode == 0 and "not an image's first boot" in r.stdout
    assert medium.snapshot() == before
    assert not (medium.root / "var/lib/edge-llm/disk-ids").exists()


def test_only_an_image_build_marks_the_medium():
    """The role puts the mark only in an image; a live host gets the unit, never the mark."""
    tasks = yaml.safe_load((ROLE / "tasks/firstboot.yml").read_text())
    marks = [t for t in tasks if t.get("ansible.builtin.copy", {}).get("dest")
             == "/var/lib/edge-llm/disk-ids.pending"]
    assert len(marks) == 1
    assert marks[0]["when"] == "base_image_build and base_renew_disk_ids"


def test_a_broken_state_file_changes_nothing(medium: Medium):
    assert medium.run(cut_after=1).returncode == 75
    state = medium.root / "var/lib/edge-llm/disk-ids/state"
    state.write_text(state.read_text().replace("step 1", "step 1\nrm -rf /"))
    before = medium.snapshot()
    r = medium.run()
    assert r.returncode == 1 and "unknown line: rm" in r.stderr
    assert medium.snapshot() == before
