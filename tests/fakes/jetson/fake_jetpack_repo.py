"""A local, signed stand-in for NVIDIA's Jetson apt repository (JetPack 6, L4T r36.4;
JetPack 7.2, L4T r39.2).

    from fakes.jetson.fake_jetpack_repo import make_repo
    repo = make_repo(tmp_path / "jetson", release="36.4.3", arch="amd64")
    repo = make_repo(tmp_path / "jetson", release="39.2.0")   # common/ + som/, r39.2

What it mirrors (https://repo.download.nvidia.com/jetson):

    dest/
      jetson-ota-public.asc        armored public key (the real one sits at the same place)
      jetson-ota-public.gpg        the same key, binary (for signed-by / gpgv)
      common/dists/r36.4/{Release,InRelease,Release.gpg}
      common/dists/r36.4/main/binary-<arch>/{Packages,Packages.gz}
      common/pool/main/c/cuda-cudart/cuda-cudart-12-6_12.6.68-1_<arch>.deb ...
      t234/dists/r36.4/...         Orin's (T234) repository: the L4T BSP packages
      t234/pool/main/n/nvidia-l4t-cuda/...

Each of common/ and t234/ is its own apt repository, as on NVIDIA's server; a flashed
JetPack 6.1/6.2 board lists them in /etc/apt/sources.list.d/nvidia-l4t-apt-source.list
(written by the BSP's nvidia-l4t-apt-source package; r36.4 also lists jetson/ffmpeg, which
this stand-in leaves out):

    deb https://repo.download.nvidia.com/jetson/common r36.4 main
    deb https://repo.download.nvidia.com/jetson/t234 r36.4 main

The suite is "r" + the L4T major.minor (r36.4 serves 36.4.0, 36.4.3 and 36.4.4 alike; the
newest JetPack of the release line wins). The Release is signed with a freshly made
ed25519 test key (tests/fakes/apt_repo.py); its uid names NVIDIA's and says FAKE.

Packages carry the real names, versions, sections, sources and pool paths, with FAKE
contents at the real paths: every library is a short text marked FAKE (not ELF), nvcc
prints the real `nvcc --version` text and refuses to compile, and python3-libnvinfer's
`tensorrt` module imports only where libnvinfer.so.10 and libnvinfer_plugin.so.10 exist
(relative to the filesystem root the module sits in), failing with the dynamic loader's
message otherwise, as the real binding's extension module does. Paths use the Jetson
triplet (aarch64-linux-gnu; CUDA 12's targets/aarch64-linux, CUDA 13's targets/sbsa-linux)
whatever `arch` is: arch only names the Debian architecture of the packages and the
index, so the builder's Orin test can install them into an amd64 stand-in of the sample
rootfs without qemu. NVIDIA publishes arm64 only.

Release line table (RELEASES): JetPack meta versions 6.1+b123 (L4T 36.4.0), 6.2+b77
(36.4.3), 6.2.1+b38 (36.4.4); CUDA 12.6 (cuda-cudart 12.6.68-1), cuDNN 9.3.0.75-1,
TensorRT 10.3.0.30-1+cuda12.5. 36.3.0 (JetPack 6.0) is refused: it is CUDA 12.2, cuDNN
8.9.4 (meta nvidia-cudnn8: there is no nvidia-cudnn in r36.3) and TensorRT 8.6.2, which
this stand-in does not model.

JetPack 7.2 (L4T 39.2.0, 39.2.1: JetPack 7.2.1), suite r39.2: the BSP's repository is
som/ (one for every module; R36's was per SoC, t234/), NVIDIA's lines on a board being

    deb https://repo.download.nvidia.com/jetson/common r39.2 main
    deb https://repo.download.nvidia.com/jetson/som r39.2 main

(and jetson/ffmpeg, left out). The stack (Stack: JP72, JP721) is CUDA 13.2 for the
toolkit's SBSA target (targets/sbsa-linux, /usr/local/cuda-13.2, sonames .so.13),
cuDNN 9.20 for CUDA 13 (libcudnn9-cuda-13), TensorRT 10.16.2.10-1+cuda13.2, and the
bindings for Ubuntu 24.04's Python 3.12. Versions: 39.2.0: nvidia-jetpack 7.2-b187 (a
Debian revision, no "+": r39.2's metas also carry no Source field), cuda-cudart,
cuda-toolkit*-config-common 13.2.75-1, cuda-nvcc 13.2.78-1, CUDA metas 13.2.1-1, libcublas
13.4.0.1-1; 39.2.1: 7.2.1-b49, cudart and nvcc 13.2.86-1, metas 13.2.2-1, libcublas
13.4.1.3-1. JetPack's package names are JetPack 6's (nvidia-cuda, nvidia-cuda-dev,
nvidia-cudnn, nvidia-tensorrt, python3-libnvinfer).

Sources (stored copies read with the search tools; "unverified" where none was found):
- r39.2: anduril/jetpack-nixos sourceinfo/r39.2-debs.json at 02d22af9 ("jetpack7: Initial
  sources bump for 39.2", 2026-06-28), debs-update.py's dump of .../jetson/{common,som}/
  dists/r39.2/main/binary-arm64/Packages.gz (its lines 55-58 pick common + som for r38/r39):
  the names, versions, Sources (none for the JetPack metas) and pool paths of 39.2.0,
  cuda-compiler-13-2 13.2.1-1 included. The script drops packages described as
  "meta-package", so cuda-runtime/-libraries/-toolkit-13-2 are not in it (their 13.2.1-1
  is a board's `dpkg -l` cuda-toolkit-13-2, public notes, index id 63188857259). The dump has
  nvidia-jetpack 7.2-b184; boards installed later report 7.2-b187 (`dpkg -l`, `apt-cache
  policy` candidate: index ids 63188857259, 54679496676, 60723004268), which this stand-in
  carries. OE4T meta-tegra d5d93dc6 (its R39.2.0 layer) agrees: cuda-cudart 13.2.75-1,
  cuda-nvcc 13.2.78-1, libcublas 13.4.0.1-1 (PRIVATE_LIBS libcublas.so.13), cudnn
  9.20.0.46-1 (libcudnn9-cuda-13; lib<name>.so.<major.minor.patch>), TensorRT
  10.16.2.10-1+cuda13.2 (libnvinfer.so.<major.minor.patch>), and cuda-shared-binaries.inc:
  "CUDA 13.x arm64 debs lay their per-target files out under targets/sbsa-linux".
- 39.2.1: a JetPack 7.2.1 recipe's signed-index reading (index id 69085488930: JetPack
  7.2.1-b49, CUDA metas 13.2.2-1, components 13.2.86-1, libcublas-13-2 13.4.1.3-1, python
  3.12), and an Orin Nano's environment report (index id 68579880183: nvidia-jetpack
  7.2.1-b49, nvcc --version, libcudnn9-cuda-13 9.20.0.46-1, tensorrt 10.16.2.10 in
  Python 3.12.3).
- nvcc banners: 13.2.86 as that Jetson prints it; 13.2.78's is NVIDIA's CUDA 13.2.1 build
  (compiler.37668154_0) as x86 hosts print it (index id 55253678012), its arm64 "Built on"
  line unverified (the arm64 deb's ptxas shows the same build, index id 56759163122).
- python3-libnvinfer's dist-info version has four parts from 10.14 (JetPack 7.0's
  tensorrt-10.14.1.31, index id 61507844550; a 7.2.1 board's pip sees 10.16.2.10).
- Unverified for r39.2, modelled on r36.4: the metas' Depends (nvidia-cuda ->
  cuda-runtime-13-2, nvidia-cudnn -> libcudnn9-cuda-13, nvidia-tensorrt -> tensorrt-libs),
  the ld.so.conf.d file names (000_cuda.conf, 988_cuda-13.conf) and the alternatives
  (/usr/local/cuda, /usr/local/cuda-13 -> /usr/local/cuda-13.2).
- Package names, versions, Source and Filename (pool path) of both repositories:
  anduril/jetpack-nixos sourceinfo/r36.4-debs.json at 9fc9edb2 (JetPack 6.2, L4T 36.4.3)
  and eaac56e2 (6.2.1, 36.4.4), r36.3-debs.json at 0cdc7172 (JetPack 6.0), generated by
  sourceinfo/debs-update.py from .../jetson/{common,t234}/dists/r36.X/main/binary-arm64/
  Packages.gz (that script also shows the common + t234 split for r35/r36).
- nvidia-jetpack's stanza (Source: nvidia-jetpack (6.2), Section metapackages, Priority
  standard, Maintainer NVIDIA Corporation, Homepage, Depends nvidia-jetpack-runtime (= V),
  nvidia-jetpack-dev (= V), "NVIDIA Jetpack Meta Package"), 6.1+b123 and 6.2+b77 in r36.4:
  `apt-cache show nvidia-jetpack` dumps from Orin boards in public notes (index ids
  44360776697, 10974585025, 21386773502 for 6.2.1+b38 with "APT-Sources: https://repo.
  download.nvidia.com/jetson/common r36.4/main arm64 Packages").
- The sources list with common, t234 and ffmpeg for r36.4: a board's nvidia-l4t-apt-
  source.list quoted in public notes (index id 56133801515); key URL .../jetson/jetson-ota-
  public.asc: Dockerfiles that add the repository (mdegans/docker-tegra-ubuntu
  tegra-ubuntu.Dockerfile and others). NVIDIA's key (a stored copy of jetson-ota-public.asc,
  XavierGeerinck/Jetson-Linux-PyTorch efe07a46): rsa4096 3C6D 1FF3 100C 8C3A BB08  69C0 E654
  3461 A999 6195, uid "NVIDIA Corporation <linux-tegra-bugs@nvidia.com>", created
  2019-05-09, signing subkey 0D296FFB880FB004; whether r36.4's Release is signed by that
  subkey is unverified.
- `nvcc --version` of CUDA 12.6 on JetPack 6.2.1 (index id 21386773502): NVCC_VERSION.
- python3-libnvinfer puts `tensorrt` and tensorrt-10.3.0.dist-info in
  /usr/lib/python3.10/dist-packages (JetPack 6.2, TensorRT 10.3; index id 69063327475,
  which also gives tensorrt.__version__ == "10.3.0"). Being CPython 3.10 bindings, they are
  not on a Debian bookworm python3.11's path, and would not load there.
- /usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-12.X (update-alternatives),
  /etc/ld.so.conf.d/000_cuda.conf (cuda-toolkit-config-common: /usr/local/cuda/targets/
  <triplet>/lib) and 988_cuda-12.conf (/usr/local/cuda-12/targets/<triplet>/lib): CUDA
  installs in public notes (index ids 31441492147, 14746738643, 52526136210). Which
  package's maintainer script runs update-alternatives is unverified: here
  cuda-toolkit-12-6-config-common's postinst does (it ships /usr/local/cuda-12.6 so the
  path exists when it runs).
- Unverified, chosen to be no looser than the real packages: the Depends of the JetPack
  sub-metas (nvidia-cuda -> cuda-runtime-12-6, nvidia-cuda-dev -> cuda-toolkit-12-6,
  nvidia-cudnn -> libcudnn9-cuda-12, nvidia-tensorrt -> tensorrt-libs: python3-libnvinfer
  is not pulled in, so install it by name), the CUDA metas' versions (12.6.11-1, as
  cuda-compiler-12-6) and their Depends (a subset: cuda-libraries-12-6 is cudart and
  cuBLAS here), the Release's Origin/Label. The real nvidia-jetpack-runtime/-dev also pull
  VPI, OpenCV, the container runtime, Nsight and the multimedia API, which are left out.
  The real python3-libnvinfer likely also depends on python3 (>= 3.10), python3 (<< 3.11),
  which a bookworm rootfs cannot satisfy; left out (unverified) so the stand-in installs.

Host tools: dpkg-deb (dpkg), apt-ftparchive (apt-utils), gpg + gpgconf (gnupg). Takes
about a second; writes nothing outside `dest` (the GNUPGHOME in /tmp is removed).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..apt_repo import (
    DebSpec,
    build_deb,
    export_public,
    generate_key,
    gnupg_home,
    sign_release,
    write_indices,
)

BASE_URL = "https://repo.download.nvidia.com/jetson"
REPOS = ("common", "t234")
COMPONENTS = ("main",)
KEY_NAME = "jetson-ota-public.asc"
KEYRING_NAME = "jetson-ota-public.gpg"
KEY_UID = "NVIDIA Corporation (FAKE, edge-llm builder tests) <fake-jetson@example.invalid>"
MAINTAINER = "NVIDIA Corporation"
HOMEPAGE = "http://developer.nvidia.com/jetson"
SOURCE_DATE_EPOCH = "1736294977"  # 2025-01-08T00:09:37Z, L4T 36.4.3's build date

TRIPLET = "aarch64-linux-gnu"  # Jetson's, whatever the stand-in's Debian architecture
LIB_DIR = f"usr/lib/{TRIPLET}"
L4T_LIB_DIR = f"usr/lib/{TRIPLET}/nvidia"  # L4T r36's userspace drivers (nvidia-l4t-*)


@dataclass(frozen=True)
class Stack:
    """JetPack's CUDA, cuDNN and TensorRT as one release's common/ repository has them:
    the Debian versions of each package and what their files are called."""

    cuda: str  # "12.6"
    cudart: str  # cuda-cudart-*, cuda-cudart-dev-*, cuda-toolkit-*config-common
    nvcc: str  # cuda-nvcc-*
    cuda_meta: str  # cuda-runtime/-libraries/-libraries-dev/-toolkit/-compiler-*
    cublas: str  # libcublas-*, libcublas-dev-*
    cudnn: str  # libcudnn9-cuda-<major>, libcudnn9-dev-cuda-<major>
    trt: str  # libnvinfer10, ..., python3-libnvinfer
    trt_so: str  # libnvinfer.so.<trt_so>
    trt_version: str  # tensorrt.__version__ and its dist-info
    target: str  # the toolkit's targets/<target>: aarch64-linux (CUDA 12), sbsa-linux (13)
    python: str  # the sample rootfs's Python, whose dist-packages python3-libnvinfer fills
    nvcc_version: str  # what `nvcc --version` prints

    @property
    def major(self) -> str:
        return self.cuda.split(".")[0]

    @property
    def dash(self) -> str:
        return self.cuda.replace(".", "-")

    @property
    def home(self) -> str:
        return f"usr/local/cuda-{self.cuda}"

    @property
    def lib(self) -> str:
        return f"{self.home}/targets/{self.target}/lib"

    @property
    def include(self) -> str:
        return f"{self.home}/targets/{self.target}/include"

    def python_dir(self, python: str | None = None) -> str:
        return f"usr/lib/python{python or self.python}/dist-packages"

    def runtime_files(self, python: str | None = None) -> dict[str, tuple[str, ...]]:
        """What the engine's checks can look for after installing the metas (relative to
        the rootfs): the soname links, as the dynamic loader resolves them."""
        m = self.major
        return {
            "nvidia-cuda": (f"{self.lib}/libcudart.so.{m}", f"{self.lib}/libcublas.so.{m}",
                            f"{self.lib}/libcublasLt.so.{m}"),
            "nvidia-cudnn": (f"{LIB_DIR}/libcudnn.so.9",),
            "nvidia-tensorrt": (f"{LIB_DIR}/libnvinfer.so.10",
                                f"{LIB_DIR}/libnvinfer_plugin.so.10"),
            "python3-libnvinfer": (f"{self.python_dir(python)}/tensorrt/__init__.py",),
            "nvidia-cuda-dev": (f"{self.home}/bin/nvcc", f"{self.lib}/libcudart.so",
                                f"{self.include}/cuda_runtime.h", f"{self.lib}/libcublas.so"),
        }


def _upstream(version: str) -> str:
    """A package version's upstream part: 12.6.68-1 -> 12.6.68."""
    return version.rsplit("-", 1)[0]


# JetPack 6.1/6.2 (r36.4): see the header for sources
JP6 = Stack(
    cuda="12.6", cudart="12.6.68-1", nvcc="12.6.68-1", cuda_meta="12.6.11-1",
    cublas="12.6.1.4-1", cudnn="9.3.0.75-1", trt="10.3.0.30-1+cuda12.5", trt_so="10.3.0",
    trt_version="10.3.0", target="aarch64-linux", python="3.10", nvcc_version="""\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Wed_Aug_14_10:14:07_PDT_2024
Cuda compilation tools, release 12.6, V12.6.68
Build cuda_12.6.r12.6/compiler.34714021_0
""")
# JetPack 7.2 (r39.2, 39.2.0): CUDA 13.2 Update 1, see the header for sources
JP72 = Stack(
    cuda="13.2", cudart="13.2.75-1", nvcc="13.2.78-1", cuda_meta="13.2.1-1",
    cublas="13.4.0.1-1", cudnn="9.20.0.46-1", trt="10.16.2.10-1+cuda13.2", trt_so="10.16.2",
    trt_version="10.16.2.10", target="sbsa-linux", python="3.12", nvcc_version="""\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2026 NVIDIA Corporation
Built on Thu_Mar_19_11:12:51_PM_PDT_2026
Cuda compilation tools, release 13.2, V13.2.78
Build cuda_13.2.r13.2/compiler.37668154_0
""")
# JetPack 7.2.1 (39.2.1): CUDA 13.2 Update 2, same cuDNN and TensorRT
JP721 = Stack(
    cuda="13.2", cudart="13.2.86-1", nvcc="13.2.86-1", cuda_meta="13.2.2-1",
    cublas="13.4.1.3-1", cudnn="9.20.0.46-1", trt="10.16.2.10-1+cuda13.2", trt_so="10.16.2",
    trt_version="10.16.2.10", target="sbsa-linux", python="3.12", nvcc_version="""\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2026 NVIDIA Corporation
Built on Fri_May_08_10:52:52_AM_PDT_2026
Cuda compilation tools, release 13.2, V13.2.86
Build cuda_13.2.r13.2/compiler.37953736_0
""")


@dataclass(frozen=True)
class Release:
    """One L4T release's JetPack: meta version, the l4t build stamp of its BSP repository's
    debs, its CUDA/cuDNN/TensorRT, that repository's name, and whether JetPack's metas
    carry a Source field (r36.4's do: "nvidia-jetpack (6.2)"; r39.2's carry none)."""

    jetpack: str  # version of nvidia-jetpack and its sub-metas
    l4t_stamp: str  # nvidia-l4t-* are <release>-<stamp>
    stack: Stack = JP6
    bsp_repo: str = "t234"
    meta_source: bool = True

    @property
    def repos(self) -> tuple[str, ...]:
        return ("common", self.bsp_repo)


RELEASES = {
    "36.4.0": Release("6.1+b123", "20240912212859"),
    "36.4.3": Release("6.2+b77", "20250107174145"),
    "36.4.4": Release("6.2.1+b38", "20250616085344"),
    "39.2.0": Release("7.2-b187", "20260601141651", JP72, "som", meta_source=False),
    "39.2.1": Release("7.2.1-b49", "20260806224157", JP721, "som", meta_source=False),
}

# the JetPack 6.1/6.2 stack (r36.4), by the names tests import
CUDA = JP6.cuda
CUDA_DASH = JP6.dash
CUDA_PKG = JP6.cudart
CUDA_META = JP6.cuda_meta
CUBLAS = JP6.cublas
CUDNN = JP6.cudnn
TRT = JP6.trt
TRT_VERSION = JP6.trt_version  # tensorrt.__version__
CUDA_HOME = JP6.home
CUDA_LIB = JP6.lib
CUDA_INCLUDE = JP6.include
TENSORRT_PYTHON_DIR = JP6.python_dir()
NVCC_VERSION = JP6.nvcc_version
RUNTIME_FILES = JP6.runtime_files()


@dataclass(frozen=True)
class JetpackRepo:
    url: str  # the base directory (common/ and t234/ or som/ under it), like BASE_URL
    key: Path  # armored public key, jetson-ota-public.asc
    keyring: Path  # the same key, binary
    fingerprint: str
    suite: str  # "r36.4"
    release: str  # "36.4.3"
    jetpack: str  # "6.2+b77"
    arch: str
    components: tuple[str, ...] = COMPONENTS
    repos: tuple[str, ...] = REPOS
    packages: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> name -> ver
    debs: dict[str, Path] = field(default_factory=dict)  # package name -> .deb in a pool
    stack: Stack = JP6
    python: str = JP6.python  # whose dist-packages python3-libnvinfer fills

    @property
    def root(self) -> Path:
        return Path(self.url)

    @property
    def runtime_files(self) -> dict[str, tuple[str, ...]]:
        return self.stack.runtime_files(self.python)

    def sources_list(self, signed_by: str | Path | None = None) -> str:
        """nvidia-l4t-apt-source.list's lines, pointed at this stand-in."""
        opts = f"[arch={self.arch} signed-by={self.keyring if signed_by is None else signed_by}] "
        return "".join(f"deb {opts}{self.root.as_uri()}/{r} {self.suite} main\n"
                       for r in self.repos)


def suite_of(release: str) -> str:
    """NVIDIA's suite for an L4T release: r<major>.<minor> (36.4.3 -> r36.4, 39.2.1 ->
    r39.2)."""
    return "r" + ".".join(release.split(".")[:2])


# --------------------------------------------------------------------------- contents


def _fake_lib(soname: str, what: str) -> bytes:
    return (f"FAKE {soname}: stands in for NVIDIA's {what} (edge-llm builder tests). "
            "Not an ELF file; nothing can load or run it.\n").encode()


def _fake_header(name: str, what: str) -> bytes:
    return f"/* FAKE {name}: stands in for NVIDIA's {what} (edge-llm builder tests). */\n".encode()


def _library(spec_files: dict[str, bytes], links: dict[str, str], directory: str,
             name: str, version: str, major: str, what: str) -> None:
    """lib<name>.so.<version> with its soname link lib<name>.so.<major>."""
    real = f"lib{name}.so.{version}"
    spec_files[f"{directory}/{real}"] = _fake_lib(real, what)
    links[f"{directory}/lib{name}.so.{major}"] = real


def _copyright(pkg: str) -> bytes:
    return (f"FAKE {pkg}: built by the edge-llm builder tests (tests/fakes/jetson).\n"
            "It holds no NVIDIA software; NVIDIA's license does not apply to it.\n").encode()


def _spec(name: str, version: str, arch: str, *, depends: str = "", source: str = "",
          section: str = "libs", description: str, files: dict[str, bytes] | None = None,
          links: dict[str, str] | None = None, **kw) -> DebSpec:
    control = {"Maintainer": MAINTAINER}
    if source:
        control["Source"] = source
    if depends:
        control["Depends"] = depends
    control |= {"Section": section, "Priority": "optional"}
    if section == "metapackages":
        control |= {"Priority": "standard", "Homepage": HOMEPAGE}
    control["Description"] = description + "\n FAKE: edge-llm builder test stand-in."
    files = {**(files or {}), f"usr/share/doc/{name}/copyright": _copyright(name)}
    return DebSpec(name=name, version=version, arch=arch, control=control, files=files,
                   links=links or {}, **kw)


def _config_postinst(s: Stack) -> str:
    prio, home, m = s.cuda.replace(".", ""), f"/usr/local/cuda-{s.cuda}", s.major
    return f"""\
#!/bin/sh
# postinst of the FAKE cuda-toolkit-{s.dash}-config-common (edge-llm builder tests):
# /usr/local/cuda and /usr/local/cuda-{m} as alternatives for {home}.
# update-alternatives honours $DPKG_ROOT, so this also works chrootless.
set -e
if [ "$1" = configure ]; then
  update-alternatives --install /usr/local/cuda cuda {home} {prio}
  update-alternatives --install /usr/local/cuda-{m} cuda-{m} {home} {prio}
fi
exit 0
"""


def _config_prerm(s: Stack) -> str:
    return f"""\
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = deconfigure ]; then
  update-alternatives --remove cuda /usr/local/cuda-{s.cuda}
  update-alternatives --remove cuda-{s.major} /usr/local/cuda-{s.cuda}
fi
exit 0
"""


LDCONFIG = """\
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ]; then
  ldconfig
fi
exit 0
"""


def _nvcc(s: Stack) -> str:
    return f"""\
#!/bin/sh
# FAKE nvcc (edge-llm builder tests): prints the real CUDA {s.cuda} banner, compiles nothing.
for a in "$@"; do
  case "$a" in
    --version|-V)
      cat <<'EOF'
{s.nvcc_version}EOF
      exit 0 ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "nvcc fatal   : No input files specified; use option --help for more information" >&2
  exit 1
fi
echo "nvcc: FAKE stand-in of NVIDIA's CUDA {s.cuda} compiler (edge-llm builder tests): it" \\
  "cannot compile anything; build on a Jetson with JetPack's real cuda-nvcc-{s.dash}" >&2
exit 1
"""


def _tensorrt_init(s: Stack) -> str:
    return f'''\
"""FAKE tensorrt (edge-llm builder tests): stands in for python3-libnvinfer {s.trt}.

The real package's extension module links libnvinfer.so.10 and libnvinfer_plugin.so.10; the
dynamic loader refuses to import it when one is missing. This stand-in looks for them at
their real paths under the filesystem root it is installed in.
"""

from pathlib import Path as _Path

__version__ = "{s.trt_version}"

_root = _Path(__file__).resolve().parents[5]  # <root>/{s.python_dir()}/tensorrt/
for _soname in ("libnvinfer.so.10", "libnvinfer_plugin.so.10"):
    if not (_root / "{LIB_DIR}" / _soname).exists():
        raise ImportError(f"{{_soname}}: cannot open shared object file: No such file or "
                          "directory")
del _soname, _root, _Path
'''


# R36's, by the names tests import
CONFIG_POSTINST = _config_postinst(JP6)
CONFIG_PRERM = _config_prerm(JP6)
NVCC = _nvcc(JP6)
TENSORRT_INIT = _tensorrt_init(JP6)


def _common_specs(rel: Release, arch: str, python: str) -> list[DebSpec]:
    jp, jp_source, s = rel.jetpack, rel.jetpack.split("+", 1)[0], rel.stack
    specs: list[DebSpec] = []

    def meta(name: str, depends: str, what: str) -> None:
        specs.append(_spec(name, jp, arch, depends=depends,
                           source=f"{name} ({jp_source})" if rel.meta_source else "",
                           section="metapackages", description=what))

    c, m, cudnn_lib = s.dash, s.major, f"libcudnn9-cuda-{s.major}"
    meta("nvidia-jetpack", f"nvidia-jetpack-runtime (= {jp}), nvidia-jetpack-dev (= {jp})",
         "NVIDIA Jetpack Meta Package")
    meta("nvidia-jetpack-runtime", f"nvidia-cuda (= {jp}), nvidia-cudnn (= {jp}), "
         f"nvidia-tensorrt (= {jp})", "NVIDIA Jetpack Runtime Meta Package")
    meta("nvidia-jetpack-dev", f"nvidia-cuda-dev (= {jp}), nvidia-cudnn-dev (= {jp}), "
         f"nvidia-tensorrt-dev (= {jp})", "NVIDIA Jetpack Development Meta Package")
    meta("nvidia-cuda", f"cuda-runtime-{c} (>= {s.cuda_meta})", "NVIDIA CUDA Meta Package")
    meta("nvidia-cuda-dev", f"cuda-toolkit-{c} (>= {s.cuda_meta})",
         "NVIDIA CUDA Developer Meta Package")
    meta("nvidia-cudnn", f"{cudnn_lib} (= {s.cudnn})", "NVIDIA CUDNN Meta Package")
    meta("nvidia-cudnn-dev", f"libcudnn9-dev-cuda-{m} (= {s.cudnn})",
         "NVIDIA CUDNN Developer Meta Package")
    meta("nvidia-tensorrt", f"tensorrt-libs (= {s.trt})", "NVIDIA TensorRT Meta Package")
    meta("nvidia-tensorrt-dev", f"nvidia-tensorrt (= {jp}), libnvinfer-dev (= {s.trt}), "
         f"libnvinfer-plugin-dev (= {s.trt})", "NVIDIA TensorRT Developer Meta Package")

    # CUDA: the metas, the config packages (source cuda-cudart), cudart, cuBLAS, nvcc
    for name, depends, what in (
        (f"cuda-runtime-{c}", f"cuda-libraries-{c} (>= {s.cuda_meta})",
         "CUDA Runtime meta-package"),
        (f"cuda-libraries-{c}", f"cuda-cudart-{c} (>= {s.cudart}), libcublas-{c} "
         f"(>= {s.cublas})", "CUDA Libraries meta-package"),
        (f"cuda-toolkit-{c}", f"cuda-compiler-{c} (>= {s.cuda_meta}), cuda-libraries-{c} "
         f"(>= {s.cuda_meta}), cuda-libraries-dev-{c} (>= {s.cuda_meta})",
         "CUDA Toolkit meta-package"),
        (f"cuda-libraries-dev-{c}", f"cuda-cudart-dev-{c} (>= {s.cudart}), libcublas-dev-{c} "
         f"(>= {s.cublas})", "CUDA Libraries Dev meta-package"),
        (f"cuda-compiler-{c}", f"cuda-nvcc-{c} (>= {s.nvcc})", "CUDA compiler"),
    ):
        specs.append(_spec(name, s.cuda_meta, arch, depends=depends, section="devel",
                           description=what))

    ld_cuda = f"/usr/local/cuda/targets/{s.target}/lib\n".encode()
    ld_cuda_major = f"/usr/local/cuda-{m}/targets/{s.target}/lib\n".encode()
    specs += [
        _spec("cuda-toolkit-config-common", s.cudart, "all", source="cuda-cudart",
              section="devel", description="Common config package for CUDA Toolkit.",
              files={"etc/ld.so.conf.d/000_cuda.conf": ld_cuda},
              conffiles=["/etc/ld.so.conf.d/000_cuda.conf"], scripts={"postinst": LDCONFIG}),
        _spec(f"cuda-toolkit-{m}-config-common", s.cudart, "all", source="cuda-cudart",
              section="devel", description=f"Common config package for CUDA Toolkit {m}.",
              files={f"etc/ld.so.conf.d/988_cuda-{m}.conf": ld_cuda_major},
              conffiles=[f"/etc/ld.so.conf.d/988_cuda-{m}.conf"],
              scripts={"postinst": LDCONFIG}),
        _spec(f"cuda-toolkit-{c}-config-common", s.cudart, "all", source="cuda-cudart",
              section="devel", description=f"Common config package for CUDA Toolkit {s.cuda}.",
              dirs=[s.home], scripts={"postinst": _config_postinst(s),
                                      "prerm": _config_prerm(s)}),
    ]
    files: dict[str, bytes] = {}
    links: dict[str, str] = {f"{s.home}/lib64": f"targets/{s.target}/lib"}
    _library(files, links, s.lib, "cudart", _upstream(s.cudart), m, "CUDA runtime")
    specs.append(_spec(
        f"cuda-cudart-{c}", s.cudart, arch, source="cuda-cudart",
        depends=f"cuda-toolkit-{c}-config-common, cuda-toolkit-{m}-config-common, "
        "cuda-toolkit-config-common", description="CUDA Runtime native Libraries",
        files=files, links=links, scripts={"postinst": LDCONFIG}))
    specs.append(_spec(
        f"cuda-cudart-dev-{c}", s.cudart, arch, source="cuda-cudart",
        depends=f"cuda-cudart-{c} (>= {s.cudart})", description="CUDA Runtime native dev "
        "links, headers", files={f"{s.include}/cuda_runtime.h": _fake_header(
            "cuda_runtime.h", "CUDA runtime header")},
        links={f"{s.lib}/libcudart.so": f"libcudart.so.{m}"}))
    files, links = {}, {}
    _library(files, links, s.lib, "cublas", _upstream(s.cublas), m, "cuBLAS")
    _library(files, links, s.lib, "cublasLt", _upstream(s.cublas), m, "cuBLASLt")
    specs.append(_spec(f"libcublas-{c}", s.cublas, arch, source="libcublas",
                       description="CUBLAS native runtime libraries", files=files, links=links,
                       scripts={"postinst": LDCONFIG}))
    specs.append(_spec(
        f"libcublas-dev-{c}", s.cublas, arch, source="libcublas",
        depends=f"libcublas-{c} (>= {s.cublas})", description="CUBLAS native dev links, "
        "headers", files={f"{s.include}/cublas_v2.h": _fake_header("cublas_v2.h",
                                                                    "cuBLAS header")},
        links={f"{s.lib}/libcublas.so": f"libcublas.so.{m}",
               f"{s.lib}/libcublasLt.so": f"libcublasLt.so.{m}"}))
    specs.append(_spec(
        f"cuda-nvcc-{c}", s.nvcc, arch, source="cuda-nvcc", section="devel",
        depends=f"cuda-toolkit-{c}-config-common", description="CUDA nvcc",
        files={f"{s.home}/bin/nvcc": _nvcc(s).encode()}, modes={f"{s.home}/bin/nvcc": 0o755}))

    # cuDNN 9 (source cudnn): lib<name>.so.<major.minor.patch>, as meta-tegra installs it
    files, links = {}, {}
    cudnn_so = ".".join(_upstream(s.cudnn).split(".")[:3])
    for name in ("cudnn", "cudnn_graph", "cudnn_ops", "cudnn_cnn", "cudnn_adv"):
        _library(files, links, LIB_DIR, name, cudnn_so, "9", "cuDNN")
    specs.append(_spec(cudnn_lib, s.cudnn, arch, source="cudnn",
                       description=f"cuDNN runtime libraries for CUDA {s.cuda}", files=files,
                       links=links, scripts={"postinst": LDCONFIG}))
    specs.append(_spec(
        f"libcudnn9-dev-cuda-{m}", s.cudnn, arch, source="cudnn", section="libdevel",
        depends=f"{cudnn_lib} (= {s.cudnn})", description="cuDNN development headers and "
        f"symlinks for CUDA {s.cuda}", files={f"usr/include/{TRIPLET}/cudnn.h": _fake_header(
            "cudnn.h", "cuDNN header")}, links={f"{LIB_DIR}/libcudnn.so": "libcudnn.so.9"}))

    # TensorRT 10 (source tensorrt)
    trt = s.trt
    files, links = {}, {}
    _library(files, links, LIB_DIR, "nvinfer", s.trt_so, "10", "TensorRT")
    specs.append(_spec("libnvinfer10", trt, arch, source="tensorrt",
                       description="TensorRT runtime libraries", files=files, links=links,
                       scripts={"postinst": LDCONFIG}))
    files, links = {}, {}
    _library(files, links, LIB_DIR, "nvinfer_plugin", s.trt_so, "10", "TensorRT plugins")
    specs.append(_spec("libnvinfer-plugin10", trt, arch, source="tensorrt",
                       depends=f"libnvinfer10 (= {trt})", description="TensorRT plugin libraries",
                       files=files, links=links, scripts={"postinst": LDCONFIG}))
    specs.append(_spec("tensorrt-libs", trt, arch, source="tensorrt",
                       depends=f"libnvinfer10 (= {trt}), libnvinfer-plugin10 (= {trt})",
                       section="metapackages", description="Meta package for TensorRT runtime "
                       "libraries"))
    specs.append(_spec(
        "libnvinfer-dev", trt, arch, source="tensorrt", section="libdevel",
        depends=f"libnvinfer10 (= {trt})", description="TensorRT development libraries",
        files={f"usr/include/{TRIPLET}/NvInfer.h": _fake_header("NvInfer.h", "TensorRT header")},
        links={f"{LIB_DIR}/libnvinfer.so": "libnvinfer.so.10"}))
    specs.append(_spec(
        "libnvinfer-plugin-dev", trt, arch, source="tensorrt", section="libdevel",
        depends=f"libnvinfer-plugin10 (= {trt})", description="TensorRT plugin libraries",
        files={f"usr/include/{TRIPLET}/NvInferPlugin.h": _fake_header(
            "NvInferPlugin.h", "TensorRT plugin header")},
        links={f"{LIB_DIR}/libnvinfer_plugin.so": "libnvinfer_plugin.so.10"}))
    py = s.python_dir(python)
    binding = f"tensorrt.cpython-{python.replace('.', '')}-aarch64-linux-gnu.so"
    dist_info = f"{py}/tensorrt-{s.trt_version}.dist-info"
    specs.append(_spec(
        "python3-libnvinfer", trt, arch, source="tensorrt", section="python",
        depends=f"libnvinfer10 (= {trt}), libnvinfer-plugin10 (= {trt})",
        description="Python 3 bindings for TensorRT standard runtime",
        files={f"{py}/tensorrt/__init__.py": _tensorrt_init(s).encode(),
               f"{py}/tensorrt/{binding}": _fake_lib(binding, "TensorRT Python binding"),
               f"{dist_info}/METADATA": (f"Metadata-Version: 2.1\nName: tensorrt\n"
                                         f"Version: {s.trt_version}\nSummary: FAKE stand-in of "
                                         "NVIDIA's TensorRT Python bindings\n").encode(),
               f"{dist_info}/top_level.txt": b"tensorrt\n"}))
    return specs


def _bsp_specs(release: str, rel: Release, arch: str) -> list[DebSpec]:
    """The BSP packages apply_binaries.sh already installs; here so t234/ (som/) is not
    empty and apt sees the same versions the rootfs records."""
    version = f"{release}-{rel.l4t_stamp}"
    files, links = {}, {}
    _library(files, links, L4T_LIB_DIR, "cuda", "1.1", "1", "CUDA driver (L4T)")
    return [
        _spec("nvidia-l4t-core", version, arch, description="NVIDIA Core Package",
              files={"etc/nv_tegra_release.fake": b"FAKE: the BSP writes /etc/nv_tegra_release\n"}),
        _spec("nvidia-l4t-cuda", version, arch, depends=f"nvidia-l4t-core (= {version})",
              description="NVIDIA CUDA Package", files=files, links=links),
    ]


# --------------------------------------------------------------------------- entry point


def make_repo(dest: Path, release: str = "36.4.3", arch: str = "arm64",
              python: str | None = None) -> JetpackRepo:
    """Build the fake, signed Jetson apt repository for one L4T release in `dest`.
    `python`: the Python whose dist-packages python3-libnvinfer fills (default the sample
    rootfs's: JetPack 6's Ubuntu 22.04 has 3.10, JetPack 7.2's 24.04 3.12; a test on a
    Debian 12 stand-in rootfs passes its 3.11)."""
    if release not in RELEASES:
        raise ValueError(f"L4T {release}: the stand-in models {', '.join(RELEASES)} (JetPack "
                         "6.1-6.2.1, 7.2, 7.2.1); 36.3.0 is JetPack 6.0 (CUDA 12.2, cuDNN 8, "
                         "TensorRT 8.6)")
    rel = RELEASES[release]
    python = python or rel.stack.python
    suite = suite_of(release)
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / ".build"
    work.mkdir(exist_ok=True)
    fields = {"Origin": "NVIDIA", "Label": "NVIDIA Jetson (FAKE)", "Suite": suite,
              "Codename": suite, "Architectures": arch, "Components": " ".join(COMPONENTS),
              "Description": "FAKE NVIDIA Jetson repository (edge-llm builder tests)"}
    packages: dict[str, dict[str, str]] = {}
    debs: dict[str, Path] = {}
    try:
        with gnupg_home("jetson-gpg-") as home:
            fpr = generate_key(home, KEY_UID)
            keyring, armored = export_public(home, fpr)
            (dest / KEYRING_NAME).write_bytes(keyring)
            (dest / KEY_NAME).write_text(armored)
            for repo, specs in (("common", _common_specs(rel, arch, python)),
                                (rel.bsp_repo, _bsp_specs(release, rel, arch))):
                root = dest / repo
                for spec in specs:
                    debs[spec.name] = build_deb(spec, root / spec.pool_dir(), work,
                                                SOURCE_DATE_EPOCH)
                packages[repo] = {s.name: s.version for s in specs}
                write_indices(root, suite, COMPONENTS, arch, fields, xz=False,
                              component_release=False)
                sign_release(home, root / "dists" / suite, fpr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return JetpackRepo(url=str(dest), key=dest / KEY_NAME, keyring=dest / KEYRING_NAME,
                       fingerprint=fpr, suite=suite, release=release, jetpack=rel.jetpack,
                       arch=arch, repos=rel.repos, packages=packages, debs=debs,
                       stack=rel.stack, python=python)
