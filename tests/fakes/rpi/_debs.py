"""Build .deb files from an in-memory description with dpkg-deb (no debhelper, no fakeroot)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Fixed timestamp for reproducible packages (dpkg-deb clamps mtimes to it).
SOURCE_DATE_EPOCH = "1737936000"  # 2025-01-27T00:00:00Z, the 6.6.74-1+rpt1 upload date


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """subprocess.run with check and an error that shows what the tool said."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@dataclass
class DebSpec:
    name: str
    version: str
    arch: str
    control: dict[str, str]  # extra fields, in order, after Package/Version/Architecture
    files: dict[str, bytes] = field(default_factory=dict)  # "usr/lib/x" -> content
    modes: dict[str, int] = field(default_factory=dict)  # path -> mode (default 0644)
    dirs: list[str] = field(default_factory=list)  # extra (empty) directories
    scripts: dict[str, str] = field(default_factory=dict)  # preinst/postinst/prerm/postrm
    conffiles: list[str] = field(default_factory=list)  # absolute paths

    @property
    def filename(self) -> str:
        upstream = self.version.split(":", 1)[-1]  # the epoch is not in file names
        return f"{self.name}_{upstream}_{self.arch}.deb"


def build_deb(spec: DebSpec, out_dir: Path, work: Path) -> Path:
    stage = work / f"{spec.name}_{spec.arch}"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "DEBIAN").mkdir(parents=True)
    os.chmod(stage, 0o755)
    size = 0
    sums = []
    for rel, data in sorted(spec.files.items()):
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, spec.modes.get(rel, 0o644))
        size += len(data)
        if not rel.startswith("etc/"):
            sums.append(f"{hashlib.md5(data).hexdigest()}  {rel}\n")
    for rel in spec.dirs:
        (stage / rel).mkdir(parents=True, exist_ok=True)
    for d in [stage, *(p for p in stage.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o755)

    fields = [
        ("Package", spec.name),
        ("Version", spec.version),
        ("Architecture", spec.arch),
        ("Installed-Size", str(max(1, (size + 1023) // 1024))),
        *spec.control.items(),
    ]
    control = "".join(f"{k}: {v}\n" for k, v in fields)
    (stage / "DEBIAN" / "control").write_text(control)
    if sums:
        (stage / "DEBIAN" / "md5sums").write_text("".join(sums))
    if spec.conffiles:
        (stage / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in spec.conffiles))
    for name, text in spec.scripts.items():
        p = stage / "DEBIAN" / name
        p.write_text(text)
        os.chmod(p, 0o755)
    for p in (stage / "DEBIAN").iterdir():
        if p.name not in spec.scripts:
            os.chmod(p, 0o644)

    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / spec.filename
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z6", "--build", str(stage), str(deb)],
        env=env)
    shutil.rmtree(stage)
    return deb
