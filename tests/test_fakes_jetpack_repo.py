"""The stand-in of NVIDIA's Jetson apt repository (tests/fakes/jetson/fake_jetpack_repo.py)
behaves like the real one for apt: signed per repository (common/, t234/), refused when
tampered with, and JetPack's metas resolve from it alone; its packages install what the
engine's checks look for, at NVIDIA's paths.

Fast (a few seconds), no network. Needs dpkg, apt, apt-utils, gnupg and gpgv on the host;
a test whose tool is missing is skipped and says which package to install. The dpkg
install test needs root (dpkg --root).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from pathlib import Path

import pytest
from fakes.jetson.fake_jetpack_repo import (
    CUDA_LIB,
    LIB_DIR,
    NVCC_VERSION,
    RUNTIME_FILES,
    TENSORRT_PYTHON_DIR,
    JetpackRepo,
    make_repo,
    suite_of,
)
from host_tools import need, sh

# what the builder installs: the runtime metas, the bindings, the toolkit (llama.cpp on device)
WANTED = ("nvidia-cuda", "nvidia-cudnn", "nvidia-tensorrt", "python3-libnvinfer",
          "nvidia-cuda-dev")
TRT = "10.3.0.30-1+cuda12.5"






def stanzas(text: str) -> dict[str, dict[str, str]]:
    out = {}
    for para in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in para.splitlines() if not line[:1].isspace()
                      and ": " in line)
        out[fields["Package"]] = fields
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> JetpackRepo:
    need("dpkg-deb", "apt-ftparchive", "gpg")
    return make_repo(tmp_path_factory.mktemp("jetson-repo"), release="36.4.3", arch="amd64")


def apt_env(repo: JetpackRepo, root: Path, keyring: Path | None = None) -> dict[str, str]:
    """A throw-away apt (Dir = root) with only the stand-in's two sources, and no trust
    in the host's keys. copy:// rather than file://, so that apt copies each .deb into its
    archives (checking it against the signed index) as it would download one."""
    for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "etc/apt/sources.list.d/nvidia-l4t-apt-source.list").write_text(
        repo.sources_list(keyring).replace(" file://", " copy://"))
    conf = root / "apt.conf"
    conf.write_text(
        f'Dir "{root}/";\nDir::State::Status "{root}/var/lib/dpkg/status";\n'
        f'APT::Architecture "{repo.arch}";\nAPT::Architectures "{repo.arch}";\n'
        'Dir::Etc::TrustedParts "/nonexistent";\nDir::Etc::Trusted "/nonexistent";\n'
        'Debug::NoLocking "true";\n')
    return {"APT_CONFIG": str(conf)}


# ------------------------------------------------------------------------- layout + signing


def test_layout_is_nvidias_two_repositories_per_release(repo: JetpackRepo) -> None:
    root = Path(repo.url)
    assert (repo.suite, repo.repos, repo.components) == ("r36.4", ("common", "t234"), ("main",))
    assert repo.key == root / "jetson-ota-public.asc"
    assert repo.key.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    for r in repo.repos:
        dist = root / r / "dists/r36.4"
        for name in ("Release", "InRelease", "Release.gpg", "main/binary-amd64/Packages",
                     "main/binary-amd64/Packages.gz"):
            assert (dist / name).is_file(), f"{r}/{name}"
        release = (dist / "Release").read_text()
        assert "Suite: r36.4\n" in release and "Architectures: amd64\n" in release
    assert repo.sources_list("/k.gpg") == (
        f"deb [arch=amd64 signed-by=/k.gpg] {root.as_uri()}/common r36.4 main\n"
        f"deb [arch=amd64 signed-by=/k.gpg] {root.as_uri()}/t234 r36.4 main\n")
    assert [suite_of(r) for r in ("36.4.0", "36.4.3", "36.4.4", "36.3.0")] == [
        "r36.4", "r36.4", "r36.4", "r36.3"]
    with pytest.raises(ValueError, match=r"36\.3\.0 is JetPack 6\.0"):
        make_repo(root.parent / "never", release="36.3.0")


def test_release_verifies_with_gpgv_and_a_tampered_one_does_not(repo, tmp_path) -> None:
    need("gpgv")
    for r in repo.repos:
        dist = Path(repo.url) / r / "dists/r36.4"
        sh("gpgv", "--keyring", repo.keyring, dist / "InRelease")
        sh("gpgv", "--keyring", repo.keyring, dist / "Release.gpg", dist / "Release")
        tampered = tmp_path / f"{r}-InRelease"
        tampered.write_text((dist / "InRelease").read_text().replace("r36.4", "r36.5", 1))
        assert sh("gpgv", "--keyring", repo.keyring, tampered, check=False).returncode != 0


def test_index_has_the_real_names_versions_and_pool_paths(repo) -> None:
    root = Path(repo.url)
    common_idx = (root / "common/dists/r36.4/main/binary-amd64/Packages").read_text()
    assert gzip.decompress((root / "common/dists/r36.4/main/binary-amd64/Packages.gz")
                           .read_bytes()).decode() == common_idx
    common = stanzas(common_idx)
    t234 = stanzas((root / "t234/dists/r36.4/main/binary-amd64/Packages").read_text())
    assert {n: p["Version"] for n, p in common.items()} == repo.packages["common"]
    jp = common["nvidia-jetpack"]
    assert (jp["Version"], jp["Source"], jp["Section"], jp["Priority"]) == (
        "6.2+b77", "nvidia-jetpack (6.2)", "metapackages", "standard")
    assert jp["Depends"] == "nvidia-jetpack-runtime (= 6.2+b77), nvidia-jetpack-dev (= 6.2+b77)"
    assert jp["Description"] == "NVIDIA Jetpack Meta Package"
    # pool paths as NVIDIA's index has them (jetpack-nixos sourceinfo/r36.4-debs.json)
    for name, filename in {
        "nvidia-cuda": "pool/main/n/nvidia-cuda/nvidia-cuda_6.2+b77_amd64.deb",
        "cuda-cudart-12-6": "pool/main/c/cuda-cudart/cuda-cudart-12-6_12.6.68-1_amd64.deb",
        "cuda-toolkit-config-common":
            "pool/main/c/cuda-cudart/cuda-toolkit-config-common_12.6.68-1_all.deb",
        "cuda-nvcc-12-6": "pool/main/c/cuda-nvcc/cuda-nvcc-12-6_12.6.68-1_amd64.deb",
        "libcublas-12-6": "pool/main/libc/libcublas/libcublas-12-6_12.6.1.4-1_amd64.deb",
        "libcudnn9-cuda-12": "pool/main/c/cudnn/libcudnn9-cuda-12_9.3.0.75-1_amd64.deb",
        "libnvinfer10": f"pool/main/t/tensorrt/libnvinfer10_{TRT}_amd64.deb",
        "python3-libnvinfer": f"pool/main/t/tensorrt/python3-libnvinfer_{TRT}_amd64.deb",
    }.items():
        assert common[name]["Filename"] == filename, name
    for p in common.values():
        deb = root / "common" / p["Filename"]
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == p["SHA256"]
    assert t234["nvidia-l4t-cuda"]["Version"] == "36.4.3-20250107174145"
    assert t234["nvidia-l4t-cuda"]["Filename"] == (
        "pool/main/n/nvidia-l4t-cuda/nvidia-l4t-cuda_36.4.3-20250107174145_amd64.deb")
    assert not set(common) & set(t234)


@pytest.mark.parametrize(("release", "jetpack", "stamp"), [
    ("36.4.0", "6.1+b123", "20240912212859"), ("36.4.4", "6.2.1+b38", "20250616085344")])
def test_each_release_line_carries_its_jetpack(tmp_path, release, jetpack, stamp) -> None:
    need("dpkg-deb", "apt-ftparchive", "gpg")
    r = make_repo(tmp_path / "j", release=release)
    assert (r.suite, r.arch, r.jetpack) == ("r36.4", "arm64", jetpack)
    assert r.packages["common"]["nvidia-jetpack"] == jetpack
    assert r.packages["t234"]["nvidia-l4t-core"] == f"{release}-{stamp}"
    assert (tmp_path / "j/common/dists/r36.4/main/binary-arm64/Packages").is_file()


# ------------------------------------------------------------------------- apt


def test_apt_resolves_the_metas_from_the_stand_in_alone(repo, tmp_path) -> None:
    need("apt-get")
    env = apt_env(repo, tmp_path / "apt", repo.keyring)
    sh("apt-get", "update", env=env)
    sim = sh("apt-get", "-s", "--no-install-recommends", "install", *WANTED, env=env)
    inst = dict(line.split()[1:3] for line in sim.stdout.splitlines()
                if line.startswith("Inst "))
    inst = {name: version.strip("()") for name, version in inst.items()}
    assert inst == {
        "nvidia-cuda": "6.2+b77", "nvidia-cuda-dev": "6.2+b77", "nvidia-cudnn": "6.2+b77",
        "nvidia-tensorrt": "6.2+b77", "cuda-runtime-12-6": "12.6.11-1",
        "cuda-libraries-12-6": "12.6.11-1", "cuda-toolkit-12-6": "12.6.11-1",
        "cuda-libraries-dev-12-6": "12.6.11-1", "cuda-compiler-12-6": "12.6.11-1",
        "cuda-cudart-12-6": "12.6.68-1", "cuda-cudart-dev-12-6": "12.6.68-1",
        "cuda-nvcc-12-6": "12.6.68-1", "cuda-toolkit-config-common": "12.6.68-1",
        "cuda-toolkit-12-config-common": "12.6.68-1",
        "cuda-toolkit-12-6-config-common": "12.6.68-1",
        "libcublas-12-6": "12.6.1.4-1", "libcublas-dev-12-6": "12.6.1.4-1",
        "libcudnn9-cuda-12": "9.3.0.75-1", "tensorrt-libs": TRT, "libnvinfer10": TRT,
        "libnvinfer-plugin10": TRT, "python3-libnvinfer": TRT,
    }
    # every .deb fetched and checked against the signed index's hashes
    sh("apt-get", "install", "--download-only", "-y", "--no-install-recommends", *WANTED,
       env=env)
    fetched = sorted(p.name for p in (tmp_path / "apt/var/cache/apt/archives").glob("*.deb"))
    assert len(fetched) == len(inst)
    # nvidia-jetpack is all of it (the stand-in's subset)
    sim = sh("apt-get", "-s", "install", "nvidia-jetpack", env=env)
    assert "Inst nvidia-jetpack-runtime (6.2+b77" in sim.stdout
    assert "Inst libcudnn9-dev-cuda-12 (9.3.0.75-1" in sim.stdout


def test_apt_refuses_an_unsigned_or_tampered_repository(repo, tmp_path) -> None:
    need("apt-get", "dpkg-deb", "apt-ftparchive", "gpg")
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")  # no key: nothing verifies the Release
    proc = sh("apt-get", "update", env=apt_env(repo, tmp_path / "nokey", empty), check=False)
    assert proc.returncode != 0
    assert "NO_PUBKEY" in proc.stdout + proc.stderr or "not signed" in proc.stdout + proc.stderr

    # a Packages index changed after signing: its hash no longer matches the Release
    fresh = make_repo(tmp_path / "fresh", release="36.4.3", arch="amd64")
    idx = Path(fresh.url) / "common/dists/r36.4/main/binary-amd64/Packages"
    for p in (idx, idx.with_suffix(".gz")):
        text = (gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz"
                else p.read_text())
        text = text.replace("Version: 6.2+b77", "Version: 6.9+b1")
        p.write_bytes(gzip.compress(text.encode()) if p.suffix == ".gz" else text.encode())
    env = apt_env(fresh, tmp_path / "tampered", fresh.keyring)
    proc = sh("apt-get", "update", env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 or "W:" in out, out
    assert "Hash Sum mismatch" in out or "File has unexpected size" in out, out
    policy = sh("apt-cache", "policy", "nvidia-cuda", env=env).stdout
    assert "6.9+b1" not in policy


# ------------------------------------------------------------------------- contents


def extract(repo: JetpackRepo, root: Path, *names: str) -> None:
    for name in names:
        sh("dpkg-deb", "-x", repo.debs[name], root)


def test_tensorrt_module_imports_only_with_its_libraries(repo, tmp_path) -> None:
    root = tmp_path / "root"
    extract(repo, root, "python3-libnvinfer", "libnvinfer10", "libnvinfer-plugin10")
    env = {"PYTHONPATH": str(root / TENSORRT_PYTHON_DIR)}
    probe = ("import importlib.metadata as m, tensorrt; "
             "print(tensorrt.__version__, m.version('tensorrt'))")
    ok = sh(sys.executable, "-c", probe, env=env)
    assert ok.stdout.split() == ["10.3.0", "10.3.0"]

    (root / LIB_DIR / "libnvinfer_plugin.so.10.3.0").unlink()  # the soname link now dangles
    proc = sh(sys.executable, "-c", probe, env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: libnvinfer_plugin.so.10: cannot open shared object file: "
        "No such file or directory")
    (root / LIB_DIR / "libnvinfer.so.10").unlink()
    proc = sh(sys.executable, "-c", probe, env=env, check=False)
    assert proc.stderr.strip().splitlines()[-1].startswith("ImportError: libnvinfer.so.10: ")


def test_nvcc_prints_the_real_version_and_compiles_nothing(repo, tmp_path) -> None:
    extract(repo, tmp_path, "cuda-nvcc-12-6")
    nvcc = tmp_path / "usr/local/cuda-12.6/bin/nvcc"
    assert sh(nvcc, "--version").stdout == NVCC_VERSION
    assert "Cuda compilation tools, release 12.6, V12.6.68" in sh(nvcc, "-V").stdout
    none = sh(nvcc, check=False)
    assert (none.returncode, none.stderr) == (1, "nvcc fatal   : No input files specified; "
                                              "use option --help for more information\n")
    build = sh(nvcc, "-arch=sm_87", "-c", "x.cu", check=False)
    assert build.returncode == 1 and "FAKE stand-in" in build.stderr


def test_installing_the_metas_gives_nvidias_layout(repo, tmp_path) -> None:
    """dpkg --root installs what apt chose; the files the engine's checks look for are
    there, at NVIDIA's paths, FAKE and not ELF, and /usr/local/cuda is an alternative."""
    if os.geteuid() != 0:
        pytest.skip("dpkg --root needs root")
    need("dpkg", "update-alternatives", "apt-get")
    env = apt_env(repo, tmp_path / "apt", repo.keyring)
    sh("apt-get", "update", env=env)
    sh("apt-get", "install", "--download-only", "-y", *WANTED, env=env)
    debs = sorted((tmp_path / "apt/var/cache/apt/archives").glob("*.deb"))
    target = tmp_path / "target"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/alternatives",
              "var/log", "etc/alternatives"):
        (target / d).mkdir(parents=True)
    (target / "var/lib/dpkg/status").touch()
    sh("dpkg", f"--root={target}", "--force-script-chrootless", "--force-unsafe-io",
       "-i", *debs)

    for pkg, paths in RUNTIME_FILES.items():
        for rel in paths:
            path = target / rel
            assert path.exists(), f"{pkg}: /{rel}"
            assert not path.read_bytes().startswith(b"\x7fELF")
    assert (target / CUDA_LIB / "libcudart.so.12").read_text().startswith("FAKE libcudart")
    assert os.readlink(target / "usr/local/cuda") == "/etc/alternatives/cuda"
    assert os.readlink(target / "etc/alternatives/cuda") == "/usr/local/cuda-12.6"
    assert os.readlink(target / "usr/local/cuda-12") == "/etc/alternatives/cuda-12"
    assert os.readlink(target / "usr/local/cuda-12.6/lib64") == "targets/aarch64-linux/lib"
    assert (target / "etc/ld.so.conf.d/000_cuda.conf").read_text() == (
        "/usr/local/cuda/targets/aarch64-linux/lib\n")
    assert (target / "etc/ld.so.conf.d/988_cuda-12.conf").read_text() == (
        "/usr/local/cuda-12/targets/aarch64-linux/lib\n")
    status = sh("dpkg-query", f"--root={target}", "-W", "-f", "${Package} ${Status}\n",
                "nvidia-tensorrt", "python3-libnvinfer").stdout
    assert status.count("install ok installed") == 2


# ------------------------------------------------------------------------- JetPack 7.2 (r39.2)

# What NVIDIA's r39.2 indices hold (anduril/jetpack-nixos sourceinfo/r39.2-debs.json at
# 02d22af9: debs-update.py's dump of .../jetson/{common,som}/dists/r39.2/main/
# binary-arm64/Packages.gz): name -> (version, pool path, Source)
TRT72 = "10.16.2.10-1+cuda13.2"
R392_INDEX = {
    "cuda-compiler-13-2": ("13.2.1-1", "pool/main/c/cuda-compiler-13-2", None),
    "cuda-cudart-13-2": ("13.2.75-1", "pool/main/c/cuda-cudart", "cuda-cudart"),
    "cuda-cudart-dev-13-2": ("13.2.75-1", "pool/main/c/cuda-cudart", "cuda-cudart"),
    "cuda-toolkit-config-common": ("13.2.75-1", "pool/main/c/cuda-cudart", "cuda-cudart"),
    "cuda-toolkit-13-config-common": ("13.2.75-1", "pool/main/c/cuda-cudart", "cuda-cudart"),
    "cuda-toolkit-13-2-config-common": ("13.2.75-1", "pool/main/c/cuda-cudart",
                                        "cuda-cudart"),
    "cuda-nvcc-13-2": ("13.2.78-1", "pool/main/c/cuda-nvcc", "cuda-nvcc"),
    "libcublas-13-2": ("13.4.0.1-1", "pool/main/libc/libcublas", "libcublas"),
    "libcublas-dev-13-2": ("13.4.0.1-1", "pool/main/libc/libcublas", "libcublas"),
    "libcudnn9-cuda-13": ("9.20.0.46-1", "pool/main/c/cudnn", "cudnn"),
    "libcudnn9-dev-cuda-13": ("9.20.0.46-1", "pool/main/c/cudnn", "cudnn"),
    "libnvinfer10": (TRT72, "pool/main/t/tensorrt", "tensorrt"),
    "libnvinfer-plugin10": (TRT72, "pool/main/t/tensorrt", "tensorrt"),
    "tensorrt-libs": (TRT72, "pool/main/t/tensorrt", "tensorrt"),
    "python3-libnvinfer": (TRT72, "pool/main/t/tensorrt", "tensorrt"),
}


@pytest.fixture(scope="module")
def repo72(tmp_path_factory: pytest.TempPathFactory) -> JetpackRepo:
    need("dpkg-deb", "apt-ftparchive", "gpg")
    return make_repo(tmp_path_factory.mktemp("jetson-repo-72"), release="39.2.0", arch="amd64")


def test_jetpack_72_is_common_and_som_at_r39_2(repo72: JetpackRepo) -> None:
    """R39.2's BSP repository is som/ (one for every module), not R36's per-SoC t234/."""
    root = Path(repo72.url)
    assert (repo72.suite, repo72.repos, repo72.jetpack) == ("r39.2", ("common", "som"),
                                                            "7.2-b187")
    assert not (root / "t234").exists()
    for r in repo72.repos:
        release = (root / r / "dists/r39.2/Release").read_text()
        assert "Suite: r39.2\n" in release
    assert repo72.sources_list("/k.gpg") == (
        f"deb [arch=amd64 signed-by=/k.gpg] {root.as_uri()}/common r39.2 main\n"
        f"deb [arch=amd64 signed-by=/k.gpg] {root.as_uri()}/som r39.2 main\n")
    assert suite_of("39.2.1") == "r39.2"


def test_jetpack_72s_index_has_nvidias_names_versions_and_pool_paths(repo72) -> None:
    root = Path(repo72.url)
    common = stanzas((root / "common/dists/r39.2/main/binary-amd64/Packages").read_text())
    som = stanzas((root / "som/dists/r39.2/main/binary-amd64/Packages").read_text())
    # nvidia-jetpack and its sub-metas: 7.2-b184 in that dump, 7.2-b187 on boards since
    for name, (version, pool, source) in {
            **R392_INDEX, "nvidia-cuda": ("7.2-b187", "pool/main/n/nvidia-cuda", None)}.items():
        p = common[name]
        assert (p["Version"], p.get("Source")) == (version, source), name
        assert p["Filename"] == f"{pool}/{name}_{version}_{p['Architecture']}.deb", name
    for meta in ("nvidia-jetpack", "nvidia-cuda", "nvidia-cudnn", "nvidia-tensorrt"):
        assert common[meta]["Version"] == "7.2-b187" and "Source" not in common[meta]
    assert common["nvidia-cudnn"]["Depends"] == "libcudnn9-cuda-13 (= 9.20.0.46-1)"
    assert som["nvidia-l4t-core"]["Version"] == "39.2.0-20260601141651"
    assert som["nvidia-l4t-cuda"]["Filename"] == (
        "pool/main/n/nvidia-l4t-cuda/nvidia-l4t-cuda_39.2.0-20260601141651_amd64.deb")


def test_apt_resolves_jetpack_72s_metas_to_cuda_13_2(repo72, tmp_path) -> None:
    need("apt-get")
    env = apt_env(repo72, tmp_path / "apt", repo72.keyring)
    sh("apt-get", "update", env=env)
    sim = sh("apt-get", "-s", "--no-install-recommends", "install", *WANTED, env=env)
    inst = {name: version.strip("()") for name, version in
            (line.split()[1:3] for line in sim.stdout.splitlines() if line.startswith("Inst "))}
    assert inst == {
        "nvidia-cuda": "7.2-b187", "nvidia-cuda-dev": "7.2-b187", "nvidia-cudnn": "7.2-b187",
        "nvidia-tensorrt": "7.2-b187", "cuda-runtime-13-2": "13.2.1-1",
        "cuda-libraries-13-2": "13.2.1-1", "cuda-toolkit-13-2": "13.2.1-1",
        "cuda-libraries-dev-13-2": "13.2.1-1", "cuda-compiler-13-2": "13.2.1-1",
        "cuda-cudart-13-2": "13.2.75-1", "cuda-cudart-dev-13-2": "13.2.75-1",
        "cuda-nvcc-13-2": "13.2.78-1", "cuda-toolkit-config-common": "13.2.75-1",
        "cuda-toolkit-13-config-common": "13.2.75-1",
        "cuda-toolkit-13-2-config-common": "13.2.75-1",
        "libcublas-13-2": "13.4.0.1-1", "libcublas-dev-13-2": "13.4.0.1-1",
        "libcudnn9-cuda-13": "9.20.0.46-1", "tensorrt-libs": TRT72, "libnvinfer10": TRT72,
        "libnvinfer-plugin10": TRT72, "python3-libnvinfer": TRT72,
    }


def test_installing_jetpack_72_gives_cuda_13s_sbsa_layout(repo72, tmp_path) -> None:
    """CUDA 13's arm64 packages put their files under targets/sbsa-linux (sonames .so.13);
    TensorRT's binding is Ubuntu 24.04's Python 3.12's and reports 10.16.2.10."""
    if os.geteuid() != 0:
        pytest.skip("dpkg --root needs root")
    need("dpkg", "update-alternatives", "apt-get")
    env = apt_env(repo72, tmp_path / "apt", repo72.keyring)
    sh("apt-get", "update", env=env)
    sh("apt-get", "install", "--download-only", "-y", *WANTED, env=env)
    target = tmp_path / "target"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/alternatives",
              "var/log", "etc/alternatives"):
        (target / d).mkdir(parents=True)
    (target / "var/lib/dpkg/status").touch()
    sh("dpkg", f"--root={target}", "--force-script-chrootless", "--force-unsafe-io", "-i",
       *sorted((tmp_path / "apt/var/cache/apt/archives").glob("*.deb")))
    files = repo72.runtime_files
    assert files["nvidia-cuda"][0] == "usr/local/cuda-13.2/targets/sbsa-linux/lib/libcudart.so.13"
    assert files["python3-libnvinfer"] == (
        "usr/lib/python3.12/dist-packages/tensorrt/__init__.py",)
    for pkg, paths in files.items():
        for rel in paths:
            assert (target / rel).exists(), f"{pkg}: /{rel}"
    assert os.readlink(target / "etc/alternatives/cuda") == "/usr/local/cuda-13.2"
    assert os.readlink(target / "usr/local/cuda-13") == "/etc/alternatives/cuda-13"
    assert (target / "etc/ld.so.conf.d/000_cuda.conf").read_text() == (
        "/usr/local/cuda/targets/sbsa-linux/lib\n")
    nvcc = sh(target / "usr/local/cuda-13.2/bin/nvcc", "--version").stdout
    assert "Cuda compilation tools, release 13.2, V13.2.78\n" in nvcc
    probe = "import tensorrt; print(tensorrt.__version__)"
    out = sh(sys.executable, "-c", probe,
             env={"PYTHONPATH": str(target / "usr/lib/python3.12/dist-packages")})
    assert out.stdout.strip() == "10.16.2.10"


def test_jetpack_721_is_cuda_13_2_update_2(tmp_path) -> None:
    need("dpkg-deb", "apt-ftparchive", "gpg")
    r = make_repo(tmp_path / "j", release="39.2.1")
    assert (r.suite, r.repos, r.arch, r.python) == ("r39.2", ("common", "som"), "arm64", "3.12")
    assert {n: r.packages["common"][n] for n in (
        "nvidia-jetpack", "cuda-cudart-13-2", "cuda-nvcc-13-2", "cuda-toolkit-13-2",
        "libcublas-13-2", "libcudnn9-cuda-13", "libnvinfer10")} == {
        "nvidia-jetpack": "7.2.1-b49", "cuda-cudart-13-2": "13.2.86-1",
        "cuda-nvcc-13-2": "13.2.86-1", "cuda-toolkit-13-2": "13.2.2-1",
        "libcublas-13-2": "13.4.1.3-1", "libcudnn9-cuda-13": "9.20.0.46-1",
        "libnvinfer10": TRT72}
    assert r.packages["som"]["nvidia-l4t-core"] == "39.2.1-20260806224157"
    extract(r, tmp_path / "x", "cuda-nvcc-13-2")
    out = sh(tmp_path / "x/usr/local/cuda-13.2/bin/nvcc", "-V").stdout
    assert out.splitlines()[-2:] == ["Cuda compilation tools, release 13.2, V13.2.86",
                                     "Build cuda_13.2.r13.2/compiler.37953736_0"]
