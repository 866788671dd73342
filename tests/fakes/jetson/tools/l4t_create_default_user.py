#!/usr/bin/env python3
# Test fake of NVIDIA's Linux_for_Tegra/tools/l4t_create_default_user.sh as Jetson Linux
# R36.2.0 ships it (read from the public mirror johnnynunez/Linux_for_Tegra, commit
# 9a5768c1), installed by tests/fakes/jetson/fake_l4t.py under its real name. Each
# behaviour below, with the line of that script it mirrors:
#   options       -u/--username, -p/--password, -a/--autologin, -n/--hostname,
#                 -h/--help, --accept-license; an option without its value, or any
#                 other argument, prints the usage and exits 1 (parse_args, 75-112;
#                 usage, 35-50; "ERROR: Invalid parameter. Exiting..." 106)
#   checks        not root: "ERROR: please run as sudo or root user" (139-143); no
#                 rootfs/ or no rootfs/etc/passwd (145-153); no file at the fixed path
#                 /usr/bin/qemu-aarch64-static: "ERROR: please install qemu-user-static
#                 package", usage, exit 1 (155-158; looked for under $FAKE_HOST_ROOT,
#                 default /, so a test can take it away)
#   defaults      user nvidia (160-162), hostname tegra-ubuntu (168-170); without -p the
#                 password is made from the build's second, `date +%s | sha256sum |
#                 base64 | head -c 8` (164-166, 70-73): eight characters anyone who
#                 knows the build's minute can try; with -p the given one is used
#   EULA          missing license file: exit 1 (121-124); without --accept-license,
#                 whiptail, which fails without a terminal (126-134; exit 255 here)
#   output        "Creating: Username - U, Password - P, Autologin - A" on stdout, the
#                 password in clear, given or made (220), then "Creating: Hostname - H"
#                 (269)
#   the user      groupadd -rf weston-launch (228); useradd -G sudo,video,audio,adm,
#                 render,weston-launch -s /bin/bash -p "$(openssl passwd -1)" (MD5-crypt),
#                 with -d/-m unless the home exists, where useradd failing is ignored and
#                 etc/skel is copied in (230-241); gdm and lightdm groups (243-251)
#   autologin     -a: serial-getty@{ttyS0,ttyTCU0,ttyAMA0,ttyAMA6} and getty@tty1
#                 drop-ins, gdm's AutomaticLogin (174-206); without -a only getty@tty1's
#                 drop-in is removed (the serial ones' paths are misspelt there, 211-214)
#   first boot    etc/systemd/system/default.target removed, etc/nv/nvautoconfig touched
#                 (set -e: no etc/nv fails the script) (257-261)
#   hostname      etc/hostname, and "127.0.1.1 H" appended to etc/hosts unless there
#                 (266-273)
# The real one runs useradd in a qemu chroot; this one edits etc/passwd, shadow, group and
# gshadow itself (no binfmt_misc needed) with the same results.
"""l4t_create_default_user.sh: create the default user in rootfs (test fake)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

SCRIPT = "l4t_create_default_user.sh"
TOOLS_DIR = Path(__file__).resolve().parent
RFS = TOOLS_DIR.parent / "rootfs"
GROUPS = ["sudo", "video", "audio", "adm", "render", "weston-launch"]
CONSOLES = ["ttyS0", "ttyTCU0", "ttyAMA0", "ttyAMA6"]
LICENSE = "usr/share/doc/nvidia-tegra/Tegra_Software_License_Agreement-Tegra-Linux.txt"
ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VALUED = {"-u": "user", "--username": "user", "-p": "password", "--password": "password",
          "-n": "host", "--hostname": "host"}


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def usage() -> None:
    print("Usage:")
    print(f"{SCRIPT} [-u <username>] [-p <password>] [-a] [-h]")
    print("\t-u | --username\t- If not specified then default will be set to 'nvidia'.")
    print("\t-p | --password\t- If not set then randomized password will be generated.")
    print("\t-a | --autologin - If specified autologin will be enabled. Default is disabled")
    print("\t-n | --hostname - If not specified then default will be set to 'tegra-ubuntu'.")
    print("\t-h | --help - print usage")
    print("\t     --accept-license - Specified to accept the terms and conditions of EULA")
    print("Example:")
    print(f"{SCRIPT} -u nvidia -p NDZjMWM4")
    print(f"{SCRIPT} -u ubuntu -a")
    print(f"{SCRIPT} -n tegra")
    raise Exit(1)


def md5_crypt(password: str, salt: str) -> str:
    """The $1$ (MD5-crypt) hash, as `openssl passwd -1` makes it."""
    pw, sl, magic = password.encode(), salt[:8].encode(), b"$1$"
    alt = hashlib.md5(pw + sl + pw).digest()
    ctx = pw + magic + sl
    n = len(pw)
    while n > 0:
        ctx += alt[:min(16, n)]
        n -= 16
    i = len(pw)
    while i:
        ctx += b"\0" if i & 1 else pw[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for r in range(1000):
        c = pw if r & 1 else final
        if r % 3:
            c += sl
        if r % 7:
            c += pw
        c += final if r & 1 else pw
        final = hashlib.md5(c).digest()

    def b64(a: int, b: int, c: int, k: int) -> str:
        v = (a << 16) | (b << 8) | c
        out = ""
        for _ in range(k):
            out += ITOA64[v & 0x3F]
            v >>= 6
        return out

    f = final
    out = (b64(f[0], f[6], f[12], 4) + b64(f[1], f[7], f[13], 4) + b64(f[2], f[8], f[14], 4)
           + b64(f[3], f[9], f[15], 4) + b64(f[4], f[10], f[5], 4) + b64(0, 0, f[11], 2))
    return f"$1${salt[:8]}${out}"


def time_password(second: int) -> str:
    """`date +%s | sha256sum | base64 | head -c 8` at that second."""
    digest = hashlib.sha256(f"{second}\n".encode()).hexdigest()
    return base64.b64encode(f"{digest}  -\n".encode()).decode()[:8]


def read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def parse(argv: list[str]) -> dict[str, object]:
    a: dict[str, object] = {"user": "", "password": "", "autologin": False, "host": "",
                            "accept": False}
    i = 0
    while i < len(argv) and argv[i]:
        arg = argv[i]
        if arg in ("-h", "--help"):
            usage()
        elif arg in ("-a", "--autologin"):
            a["autologin"] = True
            i += 1
        elif arg in VALUED:
            if i + 1 >= len(argv) or not argv[i + 1]:
                usage()
            a[VALUED[arg]] = argv[i + 1]
            i += 2
        elif arg == "--accept-license":
            a["accept"] = True
            i += 1
        else:
            print("ERROR: Invalid parameter. Exiting...")
            usage()
    return a


def check_pre_req(a: dict[str, object]) -> None:
    if os.geteuid() != 0:
        print("ERROR: please run as sudo or root user", file=sys.stderr)
        usage()
    if not RFS.is_dir():
        print(f"ERROR: {RFS} directory not found", file=sys.stderr)
        usage()
    if not (RFS / "etc/passwd").is_file():
        print("ERROR: not a valid rootfs directory", file=sys.stderr)
        usage()
    if not (Path(os.environ.get("FAKE_HOST_ROOT", "/")) / "usr/bin/qemu-aarch64-static"
            ).is_file():
        print("ERROR: please install qemu-user-static package", file=sys.stderr)
        usage()
    a["user"] = a["user"] or "nvidia"
    if not a["password"]:
        a["password"] = time_password(int(time.time()))
    a["host"] = a["host"] or "tegra-ubuntu"


def show_eula(a: dict[str, object]) -> None:
    lic = RFS / LICENSE
    if not lic.is_file() and not Path(f"{lic}.gz").is_file():
        print("ERROR: Cannot find the Tegra software license agreement")
        raise Exit(1)
    if a["accept"]:
        return
    # whiptail --yesno needs a terminal; under a builder there is none
    print("whiptail: the license dialog (License For Customer Use of NVIDIA Software) "
          "needs an interactive terminal; pass --accept-license to accept it",
          file=sys.stderr)
    raise Exit(255)


def next_id(used: set[int], lo: int, hi: int, down: bool = False) -> int:
    rng = range(hi, lo - 1, -1) if down else range(lo, hi + 1)
    return next(i for i in rng if i not in used)


def groupadd_system(name: str) -> None:
    """groupadd -rf NAME"""
    group = read(RFS / "etc/group")
    if any(g.split(":")[0] == name for g in group):
        return
    gid = next_id({int(g.split(":")[2]) for g in group}, 100, 999, down=True)
    write(RFS / "etc/group", [*group, f"{name}:x:{gid}:"])
    if (RFS / "etc/gshadow").exists():
        write(RFS / "etc/gshadow", [*read(RFS / "etc/gshadow"), f"{name}:!::"])


def add_member(group_name: str, user: str) -> None:
    for f in ("etc/group", "etc/gshadow"):
        path = RFS / f
        if not path.exists():
            continue
        lines = []
        for line in read(path):
            fields = line.split(":")
            if fields[0] == group_name:
                members = [m for m in fields[-1].split(",") if m]
                if user not in members:
                    members.append(user)
                fields[-1] = ",".join(members)
            lines.append(":".join(fields))
        write(path, lines)


def useradd(user: str, password: str, make_home: bool) -> int:
    """useradd [-d /home/USER -m] -G GROUPS -s /bin/bash -p HASH USER: its exit code."""
    passwd, group = read(RFS / "etc/passwd"), read(RFS / "etc/group")
    names = {g.split(":")[0] for g in group}
    for g in GROUPS:
        if g not in names:
            print(f"useradd: group '{g}' does not exist", file=sys.stderr)
            return 6
    if any(p.split(":")[0] == user for p in passwd):
        print(f"useradd: user '{user}' already exists", file=sys.stderr)
        return 9
    if user in names:
        print(f"useradd: group {user} exists - if you want to add this user to that group, "
              "use -g.", file=sys.stderr)
        return 9
    if not (RFS / "etc/shadow").exists():
        print("useradd: cannot open /etc/shadow", file=sys.stderr)
        return 1
    uid = next_id({int(p.split(":")[2]) for p in passwd}, 1000, 60000)
    gids = {int(g.split(":")[2]) for g in group}
    gid = uid if uid not in gids else next_id(gids, 1000, 60000)
    salt = "".join(secrets.choice(ITOA64) for _ in range(8))
    write(RFS / "etc/passwd", [*passwd, f"{user}:x:{uid}:{gid}::/home/{user}:/bin/bash"])
    days = int(time.time()) // 86400
    write(RFS / "etc/shadow", [*read(RFS / "etc/shadow"),
                               f"{user}:{md5_crypt(password, salt)}:{days}:0:99999:7:::"])
    write(RFS / "etc/group", [*group, f"{user}:x:{gid}:"])
    if (RFS / "etc/gshadow").exists():
        write(RFS / "etc/gshadow", [*read(RFS / "etc/gshadow"), f"{user}:!::"])
    for g in GROUPS:
        add_member(g, user)
    if make_home:
        home = RFS / "home" / user
        skel = RFS / "etc/skel"
        if skel.is_dir():
            shutil.copytree(skel, home, symlinks=True)
        else:
            home.mkdir(parents=True)
        home.chmod(0o750)
        for p in [home, *home.rglob("*")]:
            os.lchown(p, uid, gid)
    return 0


def create_autologin(user: str, on: bool) -> None:
    gdm = RFS / "etc/gdm3/custom.conf"
    sysd = RFS / "etc/systemd/system"
    if on:
        if gdm.exists():
            lines = []
            for line in read(gdm):
                if "AutomaticLoginEnable =" in line:
                    line = "AutomaticLoginEnable = true"
                elif "AutomaticLogin =" in line:
                    line = f"AutomaticLogin = {user}"
                lines.append(line)
            write(gdm, lines)
        for console in CONSOLES:
            d = sysd / f"serial-getty@{console}.service.d"
            d.mkdir(parents=True, exist_ok=True)
            (d / "autologin.conf").write_text(
                "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin "
                f"{user} --keep-baud 115200 %I ${{TERM}}\n")
        d = sysd / "getty@tty1.service.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / "autologin.conf").write_text(
            f"[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin {user} %I ${{TERM}}\n")
    else:
        if gdm.exists():
            write(gdm, [f"#{line}" if "AutomaticLogin" in line and not line.startswith("#")
                        else line for line in read(gdm)])
        (sysd / "getty@tty1.service.d/autologin.conf").unlink(missing_ok=True)


def create_user(a: dict[str, object]) -> None:
    user, password = str(a["user"]), str(a["password"])
    auto = "true" if a["autologin"] else "false"
    print(f"Creating: Username - {user}, Password - {password}, Autologin - {auto}")
    groupadd_system("weston-launch")
    if (RFS / "home" / user).is_dir():
        useradd(user, password, make_home=False)  # `|| true` in the real script
        skel = RFS / "etc/skel"
        if skel.is_dir():
            shutil.copytree(skel, RFS / "home" / user, symlinks=True, dirs_exist_ok=True)
    else:
        rc = useradd(user, password, make_home=True)
        if rc:
            raise Exit(rc)
    if (RFS / "etc/gdm3/custom.conf").exists():
        add_member("gdm", user)
        add_member("video", "gdm")
    if (RFS / "lib/systemd/system/lightdm.service").exists():
        add_member("lightdm", user)
        add_member("video", "lightdm")
    create_autologin(user, bool(a["autologin"]))
    default = RFS / "etc/systemd/system/default.target"
    if default.is_symlink() or default.exists():
        default.unlink()
    nv = RFS / "etc/nv"
    if not nv.is_dir():
        print("touch: cannot touch 'etc/nv/nvautoconfig': No such file or directory",
              file=sys.stderr)
        raise Exit(1)
    (nv / "nvautoconfig").touch()


def create_hostname(host: str) -> None:
    print(f"Creating: Hostname - {host}")
    (RFS / "etc/hostname").write_text(f"{host}\n")
    hosts = RFS / "etc/hosts"
    if not hosts.exists():  # grep -Fxc fails: nothing is appended
        print(f"grep: {hosts}: No such file or directory", file=sys.stderr)
        return
    line = f"127.0.1.1 {host}"
    if line not in read(hosts):
        text = hosts.read_text()
        hosts.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")


def main(argv: list[str]) -> int:
    try:
        a = parse(argv)
        check_pre_req(a)
        show_eula(a)
        create_user(a)
        create_hostname(str(a["host"]))
    except Exit as e:
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
