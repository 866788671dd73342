"""`builder flash` for disk images: the device checks (lsblk views made from fixtures,
as a host with a system disk, a mounted card, a small stick and a fixed disk shows
them), a dry run, and a real write to a file read back byte for byte. The block nodes
the CLI tests make are refused before anything is opened. The writes to devices go to
loop devices this test attaches (root and losetup, else skipped): a write on a host
without udev, and the device swapped between the checks and the write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder import doctor
from builder.errors import BuilderError
from builder.flash import BlockView, Image, Request, check_device, flash
from builder.run import run

GiB = 1 << 30
LSBLK = {"blockdevices": [
    {"name": "nvme0n1", "path": "/dev/nvme0n1", "size": 512 * GiB, "rm": False,
     "type": "disk", "tran": "nvme", "model": "Samsung SSD 980", "serial": "S1",
     "mountpoints": [None], "children": [
         {"name": "nvme0n1p1", "path": "/dev/nvme0n1p1", "mountpoints": ["/boot/efi"]},
         {"name": "nvme0n1p2", "path": "/dev/nvme0n1p2", "mountpoints": ["/"]}]},
    {"name": "sda", "path": "/dev/sda", "size": 2000 * GiB, "rm": False, "type": "disk",
     "tran": "sata", "model": "WDC WD20", "serial": "W2", "mountpoints": [None],
     "children": [{"name": "sda1", "path": "/dev/sda1", "mountpoints": ["/srv/data"]}]},
    {"name": "sdb", "path": "/dev/sdb", "size": 32 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "SD Card Reader", "serial": "R3", "mountpoints": [None],
     "children": [{"name": "sdb1", "path": "/dev/sdb1",
                   "mountpoints": ["/media/me/bootfs"]}]},
    {"name": "sdc", "path": "/dev/sdc", "size": 1 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "Tiny Stick", "serial": "T4", "mountpoints": [None]},
    {"name": "mmcblk0", "path": "/dev/mmcblk0", "size": 64 * GiB, "rm": False,
     "type": "disk", "tran": None, "model": None, "serial": "0x1234", "mountpoints": [None]},
    {"name": "sdd", "path": "/dev/sdd", "size": 64 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "Card", "serial": "C5", "mountpoints": [None]},
]}
VIEW = BlockView.from_lsblk(json.dumps(LSBLK))


def _block(_: str) -> bool:
    return True


@pytest.mark.parametrize(("device", "message"), [
    ("/dev/nvme0n1", "this machine runs from it (/boot/efi is on it)"),
    ("/dev/sdb", "/media/me/bootfs mounted from it; unmount it first"),
    ("/dev/sdc", "1GiB is smaller than the image (4GiB)"),
    ("/dev/mmcblk0", "a fixed disk (/dev/mmcblk0 (64GiB, serial 0x1234)); if you really "
                     "mean to overwrite it, add --force-fixed"),
    ("/dev/sda", "/srv/data mounted from it"),
    ("/dev/sdd1", "not a whole disk lsblk knows"),
], ids=["system-disk", "mounted", "too-small", "fixed", "data-disk", "partition"])
def test_a_device_that_is_not_safe_to_write_is_refused(device: str, message: str) -> None:
    with pytest.raises(BuilderError, match="^--device " + device):
        try:
            check_device(device, 4 * GiB, VIEW, force_fixed=False, is_block=_block)
        except BuilderError as e:
            assert message in str(e) and "\n" not in str(e), str(e)
            raise


def test_a_removable_card_is_taken_and_a_fixed_one_only_when_forced() -> None:
    assert check_device("/dev/sdd", 4 * GiB, VIEW, force_fixed=False, is_block=_block).serial \
        == "C5"
    assert check_device("/dev/mmcblk0", 4 * GiB, VIEW, force_fixed=True, is_block=_block)
    with pytest.raises(BuilderError, match="this machine runs from it"):
        check_device("/dev/nvme0n1", 4 * GiB, VIEW, force_fixed=True, is_block=_block)


def test_something_not_a_block_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match=r"not a block device .*--to-file PATH"):
        check_device(str(tmp_path), 1, VIEW, force_fixed=False,
                     is_block=lambda p: False)


def test_a_device_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """Not "not a block device ... use --to-file": a mistyped /dev/sdX exists nowhere."""
    gone = tmp_path / "sdz"
    with pytest.raises(BuilderError) as e:
        check_device(str(gone), 1, VIEW, force_fixed=False, is_block=lambda p: False)
    assert str(e.value) == (f"--device {gone}: does not exist (`lsblk -d -o NAME,SIZE,MODEL,"
                            "SERIAL` lists this machine's disks)")
    (tmp_path / "link").symlink_to(gone)  # a by-id link whose disk is gone
    with pytest.raises(BuilderError, match="link: does not exist"):
        check_device(str(tmp_path / "link"), 1, VIEW, force_fixed=False,
                     is_block=lambda p: False)


# --- a real image, written to a file and read back -----------------------------------------

@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """A build's output as `builder build` leaves it: image, bmap, compressed copy and a
    manifest whose delivery names them (an MBR image with a boot and a root partition)."""
    d = tmp_path_factory.mktemp("build")
    raw = d / "dev.img"
    run(["truncate", "-s", "64M", raw], what="truncate")
    run(["sh", "-c", 'printf "label: dos\\nlabel-id: 0x1a2b3c4d\\nstart=16384, size=32768, '
         'type=c\\nstart=49152, type=83\\n" | sfdisk -q "$1"', "sh", raw], what="sfdisk")
    with raw.open("r+b") as f:  # some data to copy (bmaptool skips holes)
        f.seek(49152 * 512)
        f.write(os.urandom(3 << 20))
    run(["bmaptool", "-q", "create", "-o", d / "dev.bmap", raw], what="bmaptool create")
    run(["zstd", "-q", "-f", raw, "-o", d / "dev.img.zst"], what="zstd")
    (d / "manifest.json").write_text(json.dumps({"release_id": "rtest", "delivery": {
        "kind": "disk-image", "files": {"image": "dev.img", "bmap": "dev.bmap",
                                        "compressed": "dev.img.zst"},
        "bytes": raw.stat().st_size, "sha256": "x", "root_partuuid": "1a2b3c4d-02"}}))
    return d


def _image(build_dir: Path) -> Image:
    return Image.of_build(build_dir, json.loads((build_dir / "manifest.json").read_text()))


def test_writing_to_a_file_round_trips_and_checks_the_root(build_dir: Path,
                                                           tmp_path: Path) -> None:
    dest = tmp_path / "card.img"
    said: list[str] = []
    where = flash(_image(build_dir), Request(to_file=dest, say=said.append))
    assert where == str(dest)
    assert dest.read_bytes() == (build_dir / "dev.img").read_bytes()


def test_a_written_copy_without_the_root_partuuid_is_reported(build_dir: Path,
                                                              tmp_path: Path) -> None:
    m = json.loads((build_dir / "manifest.json").read_text())
    m["delivery"]["root_partuuid"] = "deadbeef-02"
    with pytest.raises(BuilderError, match="not root PARTUUID deadbeef-02"):
        flash(Image.of_build(build_dir, m), Request(to_file=tmp_path / "x.img"))


def test_a_dry_run_says_the_exact_command_and_writes_nothing(build_dir: Path,
                                                             tmp_path: Path) -> None:
    said: list[str] = []
    flash(_image(build_dir), Request(device="/dev/sdd", dry_run=True, say=said.append),
          view=VIEW, is_block=_block)
    assert said[1].strip() == (f"bmaptool copy --bmap {build_dir / 'dev.bmap'} "
                               f"{build_dir / 'dev.img.zst'} /dev/sdd")
    assert said[2].strip() == ("(written through /dev/sdd opened once after the question, "
                               "and only if it is still the device checked here)")
    assert "1a2b3c4d-02" in said[3]


def test_no_answer_to_the_question_writes_nothing(build_dir: Path) -> None:
    with pytest.raises(BuilderError, match="no confirmation"):
        flash(_image(build_dir), Request(device="/dev/sdd", confirm=lambda q: False),
              view=VIEW, is_block=_block)


def fake_lsblk(bin_dir: Path, devices: list[dict]) -> None:
    """`lsblk` on PATH printing `devices` as util-linux's lsblk (2.38.1, Debian bookworm)
    prints `lsblk -J -b -o NAME,PATH,MAJ:MIN,...` with no device named: every block
    device of the host, its columns as lowercase keys ("maj:min", "mountpoints")."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "lsblk").write_text(
        f"#!/bin/sh\necho '{json.dumps({'blockdevices': devices})}'\n")
    (bin_dir / "lsblk").chmod(0o755)


def _card(node: Path, **over) -> dict:
    """An unmounted 64 GiB USB card at `node`, as lsblk lists it."""
    return {"name": node.name, "path": str(node), "maj:min": "7:255", "size": 64 * GiB,
            "rm": True, "type": "disk", "tran": "usb", "model": "Card", "serial": "Z",
            "mountpoints": [None], **over}


def _builder(build_dir: Path, tmp_path: Path, *args: str, path: str | None = None,
             stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """`builder flash --profile x86-gateway ARGS` as a user runs it, over the build."""
    out = tmp_path / "out"
    if not out.exists():
        out.mkdir()
        (out / "x86-gateway").symlink_to(build_dir)
    exe = Path(sys.executable).with_name("builder")
    return subprocess.run([str(exe), "flash", "--profile", "x86-gateway", "--out", str(out),
                           *args], capture_output=True, text=True, stdin=stdin,
                          env={**os.environ, "PATH": path or os.environ["PATH"],
                               "COLUMNS": "200"}, timeout=120)


def test_the_cli_refuses_in_one_line_and_writes_nothing(build_dir: Path,
                                                        tmp_path: Path) -> None:
    """The real command with a real block node and lsblk (a fake on PATH) saying the card
    is mounted: refused before anything is opened."""
    node = tmp_path / "sdz"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 255))  # S_IFBLK: a loop device's number
    fake_lsblk(tmp_path / "bin", [_card(node, children=[
        {"name": "sdz1", "mountpoints": ["/media/card"]}])])
    r = _builder(build_dir, tmp_path, "--device", str(node), "--yes",
                 path=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert r.returncode == 2
    assert r.stderr == (f"error: --device {node}: /media/card mounted from it; unmount it "
                        f"first (umount {node}*)\n")


def test_without_yes_and_with_stdin_closed_it_refuses_in_one_line_naming_yes(
        build_dir: Path, tmp_path: Path) -> None:
    """A script or CI (standard input at its end) cannot answer the question: one line
    saying to add --yes, exit 2; not "interrupted" and 130. The card passes every check,
    and its node is never opened (the question comes first)."""
    node = tmp_path / "sdz"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 255))
    fake_lsblk(tmp_path / "bin", [_card(node)])
    r = _builder(build_dir, tmp_path, "--device", str(node),
                 path=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert (r.returncode, r.stderr) == (2, (
        "error: not written: standard input is closed, so nobody can answer the question; "
        "add --yes to write without asking\n"))


def test_a_device_that_does_not_exist_is_named_so_by_the_cli(build_dir: Path,
                                                             tmp_path: Path) -> None:
    r = _builder(build_dir, tmp_path, "--device", "/dev/sdz-not-here", "--yes")
    assert (r.returncode, r.stderr) == (2, (
        "error: --device /dev/sdz-not-here: does not exist (`lsblk -d -o NAME,SIZE,MODEL,"
        "SERIAL` lists this machine's disks)\n"))


# --- --to-file: a new file, renamed into place; nothing replaced without --force --------------

def test_to_file_refuses_an_existing_file_or_link_without_force(build_dir: Path,
                                                                 tmp_path: Path) -> None:
    """An existing file is not overwritten, and a link is not written through (it could
    point at anything this root process may write: /etc/shadow, a disk) unless --force,
    which then replaces the link itself."""
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    existing = tmp_path / "card.img"
    existing.write_bytes(b"an older image")
    link = tmp_path / "link.img"
    link.symlink_to(precious)
    for dest, what in ((existing, "a file"), (link, "a link")):
        with pytest.raises(BuilderError) as e:
            flash(_image(build_dir), Request(to_file=dest))
        assert str(e.value) == (f"--to-file {dest}: {what} is already there; add --force "
                                "to replace it (a link is replaced, not written through)")
    assert existing.read_bytes() == b"an older image" and precious.read_bytes() == b"keep me"

    image = (build_dir / "dev.img").read_bytes()
    for dest in (existing, link):
        assert flash(_image(build_dir), Request(to_file=dest, force=True)) == str(dest)
        assert not dest.is_symlink() and dest.read_bytes() == image
    assert precious.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.img", "link.img",
                                                          "precious"]  # no temp file left


def test_the_cli_refuses_to_file_onto_a_link_and_writes_nothing(build_dir: Path,
                                                               tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    (tmp_path / "card.img").symlink_to(precious)
    r = _builder(build_dir, tmp_path, "--to-file", str(tmp_path / "card.img"))
    assert (r.returncode, r.stderr) == (2, (
        f"error: --to-file {tmp_path / 'card.img'}: a link is already there; add --force "
        "to replace it (a link is replaced, not written through)\n"))
    assert precious.read_bytes() == b"keep me"


def test_a_file_that_fails_its_read_back_is_not_left_at_the_path(build_dir: Path,
                                                                tmp_path: Path) -> None:
    m = json.loads((build_dir / "manifest.json").read_text())
    m["delivery"]["root_partuuid"] = "deadbeef-02"
    with pytest.raises(BuilderError, match="not root PARTUUID deadbeef-02"):
        flash(Image.of_build(build_dir, m), Request(to_file=tmp_path / "x.img"))
    assert list(tmp_path.iterdir()) == []


# --- real devices: loop devices ----------------------------------------------------------------

@pytest.fixture
def loops(tmp_path: Path):
    """attach(name) -> a loop device over a new 64 MiB file tmp_path/<name> (sparse, all
    zeros); detached after the test. Skipped where loop devices cannot be attached."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed (util-linux): no loop device to write to")
    if os.geteuid() != 0:
        pytest.skip("attaching a loop device needs root")
    attached: list[str] = []

    def attach(name: str) -> Path:
        backing = tmp_path / name
        with backing.open("wb") as f:
            f.truncate(64 << 20)
        r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"losetup could not attach a loop device here: {r.stderr.strip()}")
        attached.append(r.stdout.strip())
        return Path(r.stdout.strip())

    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=False)


def _zeros(backing: Path) -> bool:
    with backing.open("rb") as f:
        return not f.read().strip(b"\0")


def test_a_device_is_written_and_read_back_on_a_host_without_udev(
        build_dir: Path, tmp_path: Path, loops) -> None:
    """`builder flash --device` where udev is not (a container, a minimal host): PATH
    holds only what `builder doctor --stage flash` lists. The write ends with the
    partition table read back from the device itself, checked against the root PARTUUID
    (a build claiming another one fails the read-back: it ran)."""
    dev = loops("card")
    path = tmp_path / "path"
    path.mkdir()
    for need in (n for n in doctor.NEEDS if n.stage == "flash"):
        (path / need.tool).symlink_to(shutil.which(need.tool))
    assert shutil.which("udevadm", path=str(path)) is None
    r = _builder(build_dir, tmp_path, "--device", str(dev), "--yes", "--force-fixed",
                 path=str(path))
    assert r.returncode == 0, r.stderr
    assert f"written to {dev}" in r.stdout
    image = (build_dir / "dev.img").read_bytes()
    assert (tmp_path / "card").read_bytes()[:len(image)] == image

    other = tmp_path / "claims-another-root"
    shutil.copytree(build_dir, other)
    m = json.loads((other / "manifest.json").read_text())
    m["delivery"]["root_partuuid"] = "deadbeef-02"
    (other / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "out" / "x86-gateway").unlink()
    (tmp_path / "out" / "x86-gateway").symlink_to(other)
    r = _builder(other, tmp_path, "--device", str(dev), "--yes", "--force-fixed",
                 path=str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"error: {dev}: written, but reading it back shows partitions 1a2b3c4d-01, "
        "1a2b3c4d-02, not root PARTUUID deadbeef-02; the medium may be faulty")


def test_a_link_re_pointed_after_the_checks_does_not_move_the_write(
        build_dir: Path, tmp_path: Path, loops) -> None:
    """The device is named by a link (as /dev/disk/by-id/... are); while the question
    waits, the link is pointed at another disk. The write goes to the disk that was
    checked, never to the link's new target."""
    checked, other = loops("checked"), loops("other")
    link = tmp_path / "by-id-card"
    link.symlink_to(checked)

    def repoint(_question: str) -> bool:
        link.unlink()
        link.symlink_to(other)
        return True

    flash(_image(build_dir), Request(device=str(link), force_fixed=True, confirm=repoint))
    image = (build_dir / "dev.img").read_bytes()
    assert (tmp_path / "checked").read_bytes()[:len(image)] == image
    assert _zeros(tmp_path / "other")


def test_a_device_node_replaced_after_the_checks_is_refused_and_nothing_written(
        build_dir: Path, tmp_path: Path, loops) -> None:
    """The node lsblk named is replaced by a node of another disk while the question
    waits: the descriptor opened for the write is not the device (major:minor) that was
    checked, so nothing is written to either."""
    checked, other = loops("checked"), loops("other")
    node = tmp_path / "sdz"
    os.mknod(node, 0o600 | 0o060000, os.stat(checked).st_rdev)
    rdev = os.stat(checked).st_rdev
    view = BlockView.from_lsblk(json.dumps({"blockdevices": [
        _card(node, **{"maj:min": f"{os.major(rdev)}:{os.minor(rdev)}"})]}))

    def swap(_question: str) -> bool:
        os.mknod(tmp_path / "new", 0o600 | 0o060000, os.stat(other).st_rdev)
        os.replace(tmp_path / "new", node)
        return True

    with pytest.raises(BuilderError) as e:
        flash(_image(build_dir), Request(device=str(node), confirm=swap), view=view)
    new = os.stat(other).st_rdev
    assert str(e.value) == (f"--device {node}: {node} changed between the checks and the "
                            f"write (checked {os.major(rdev)}:{os.minor(rdev)}, now "
                            f"{os.major(new)}:{os.minor(new)}); nothing written, run again")
    assert _zeros(tmp_path / "checked") and _zeros(tmp_path / "other")
