"""The Orin target's two Jetson Linux lines, without a build: L4T 36 (JetPack 6) and 39.2
(JetPack 7.2). What differs is data keyed by jetson.l4t_release: the sample rootfs's
Ubuntu (a profile saying another is refused), NVIDIA's apt repositories (common/ with
t234/, or with som/), JetPack's packages, the CUDA release on the Platform (which decides
the engines that can run), and the Orin Nano's Super power modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.contracts import BuildContext
from builder.errors import BuilderError
from builder.profiles import ProfileStore
from builder.targets.jetson_orin import jetpack_packages, l4t

LLAMA = ("engine:\n  kind: llama.cpp\nmodel:\n  quant: Q4_K_M\n"
         "  source: {hf_repo: Qwen/Qwen2.5-1.5B-Instruct-GGUF}\n")
JP72 = "extends: orin-nano-8gb\nos:\n  suite: noble\njetson:\n  l4t_release: \"39.2.0\"\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def resolved(workdir: Path, yaml: str, name: str = "j"):
    from builder import resolve

    write(workdir / f"profiles/{name}.yaml", yaml)
    rp = ProfileStore().load(name)
    return resolve.resolve(rp, rp.concrete())


def context(d, workdir: Path) -> BuildContext:
    return BuildContext(device=d, cache=None, out_root=workdir)  # type: ignore[arg-type]


@pytest.mark.parametrize(("yaml", "cuda", "suite", "repos"), [
    ("extends: orin-nano-8gb\n", "12.6", "r36.4", ("common", "t234")),
    ("extends: orin-nano-8gb\njetson:\n  l4t_release: \"36.3.0\"\n  super_board: false\n",
     "12.2", "r36.3", ("common", "t234")),
    (JP72 + LLAMA, "13.2", "r39.2", ("common", "som")),
    (JP72.replace("39.2.0", "39.2.1") + LLAMA, "13.2", "r39.2", ("common", "som")),
])
def test_each_release_gives_its_cuda_and_its_jetpack_repositories(
        workdir: Path, yaml: str, cuda: str, suite: str, repos: tuple[str, ...]) -> None:
    """The device's CUDA is its JetPack's (the engines decide from it), and JetPack comes
    from NVIDIA's repositories for that release: the BSP's is som/ from L4T 38, not t234/."""
    d = resolved(workdir, yaml)
    assert d.platform.cuda == cuda
    jp = d.target._jetpack(context(d, workdir))
    assert (jp.suite, jp.repos, jp.url) == (suite, repos, l4t.JETSON_REPO)
    key = workdir / "k.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nx\n")
    assert [s.line(s.device_uri, s.keyring_inside) for s in jp.sources(key)] == [
        f"deb [signed-by=/etc/apt/keyrings/nvidia-jetpack-{r}.asc] "
        f"https://repo.download.nvidia.com/jetson/{r} {suite} main" for r in repos]


def test_jetpack_72_keeps_jetpack_6s_package_names(workdir: Path) -> None:
    """r39.2's index has nvidia-cuda, nvidia-cuda-dev, nvidia-cudnn, nvidia-tensorrt and
    python3-libnvinfer, as r36.4's (their versions are JetPack 7.2's)."""
    llama = resolved(workdir, JP72 + LLAMA)
    assert jetpack_packages("39.2.0", llama.engine.gpu_stack(llama.profile, llama.platform)) \
        == ("nvidia-cuda", "nvidia-cuda-dev")
    assert jetpack_packages("39.2.1", ("cuda-runtime", "cudnn", "tensorrt")) == (
        "nvidia-cuda", "nvidia-cudnn", "nvidia-tensorrt", "python3-libnvinfer")


@pytest.mark.parametrize(("yaml", "message"), [
    ("os:\n  suite: jammy\njetson:\n  l4t_release: \"39.2.0\"\n" + LLAMA,
     "os.suite: L4T 39.2.0's sample rootfs is Ubuntu 24.04: noble, not jammy"),
    ("os:\n  suite: noble\n",
     "os.suite: L4T 36.4.3's sample rootfs is Ubuntu 22.04: jammy, not noble"),
])
def test_a_suite_that_is_not_the_sample_rootfss_is_refused_in_one_line(
        workdir: Path, cli, yaml: str, message: str) -> None:
    """NVIDIA's sample rootfs decides the image's Ubuntu; a profile saying another would
    describe an image it does not make (a JetPack 7.2 profile extending base-jetson keeps
    its jammy until it says noble)."""
    write(workdir / "profiles/j.yaml", "extends: orin-nano-8gb\n" + yaml)
    r = cli("profiles", "validate", "profiles/j.yaml")
    assert r.code != 0 and message in r.err and r.err.count("\n") == 1, r.err


def test_tensorrt_llm_is_refused_on_jetpack_72_in_one_line(workdir: Path, cli) -> None:
    """TensorRT-LLM 0.12.0-jetson links JetPack 6's CUDA 12; on JetPack 7.2's CUDA 13.2 it
    would be installed and fail on the board. The profile check says which release it
    needs and which engines run there."""
    write(workdir / "profiles/j.yaml", JP72)
    for args in (("profiles", "validate", "profiles/j.yaml"), ("plan", "--profile", "j")):
        r = cli(*args)
        assert r.code != 0 and r.err.count("\n") == 1, r.err
        assert ("engine.kind: tensorrt-llm cannot run on jetson-orin (TensorRT-LLM "
                "0.12.0-jetson is built for JetPack 6's CUDA 12, not CUDA 13.2: set "
                "jetson.l4t_release 36.4.3 (JetPack 6.2) for it); use llama.cpp or "
                "tensorrt-edge-llm") in r.err, r.err
    write(workdir / "profiles/k.yaml", "extends: orin-nano-8gb\n")  # JetPack 6.2: runs
    assert cli("profiles", "validate", "profiles/k.yaml").code == 0


def test_a_local_mirror_of_r36s_layout_is_refused_for_jetpack_72(workdir: Path) -> None:
    """A mirror holding common/ and t234/ for r39.2 lacks the repository JetPack 7.2's BSP
    packages come from (som/): one line naming it, before anything is installed."""
    for r in ("common", "t234"):
        write(workdir / f"mirror/{r}/dists/r39.2/Release", "Suite: r39.2\n")
    d = resolved(workdir, JP72 + "  jetpack: {url: ../mirror}\n" + LLAMA)
    with pytest.raises(BuilderError, match=r"jetson.jetpack.url: .*mirror has no "
                       r"som/dists/r39.2/Release: mirror NVIDIA's common and som"):
        d.target._jetpack(context(d, workdir))
    write(workdir / "mirror/som/dists/r39.2/Release", "Suite: r39.2\n")
    jp = d.target._jetpack(context(d, workdir))
    assert jp.repos == ("common", "som") and sorted(jp.local_state()) == ["common", "som"]


def test_the_rootfs_of_jetpack_72_is_made_from_its_release(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the target hands the L4T rootfs build for a JetPack 7.2 profile: the release
    the BSP must be, JetPack's packages for the engine, from common/ and som/ at r39.2."""
    specs: list[l4t.L4tSpec] = []
    monkeypatch.setattr(l4t, "build", lambda spec, cache: specs.append(spec))
    d = resolved(workdir, JP72 + LLAMA)
    ctx = context(d, workdir)
    ctx.vendor_inputs = {"l4t_bsp": workdir / "bsp.tbz2", "l4t_rootfs": workdir / "r.tbz2"}
    d.target.rootfs(ctx)
    spec = specs[0]
    assert spec.release == "39.2.0"
    assert spec.jetpack_packages == ("nvidia-cuda", "nvidia-cuda-dev")
    assert spec.jetpack is not None
    assert (spec.jetpack.suite, spec.jetpack.repos) == ("r39.2", ("common", "som"))


@pytest.mark.parametrize(("release", "mode", "refused"), [
    ("39.2.0", 3, True), ("39.2.0", "7W", True), ("39.2.1", "MAXN_SUPER", False),
    ("39.2.0", 1, False), ("36.4.3", 3, False),
])
def test_the_nano_super_modes_are_the_releases(workdir: Path, cli, release: str, mode,
                                                refused: bool) -> None:
    """R39.2's Orin Nano Super config has 15W, 25W and MAXN_SUPER (ids 0-2); R36's also
    7W (3): a mode the board's nvpmodel lacks would fail at every boot."""
    suite = "noble" if release.startswith("39.") else "jammy"
    write(workdir / "profiles/j.yaml", f"extends: orin-nano-8gb\nos:\n  suite: {suite}\n"
          f"jetson:\n  l4t_release: \"{release}\"\n  power_mode: {mode}\n" + LLAMA)
    r = cli("profiles", "validate", "profiles/j.yaml")
    if refused:
        assert r.code != 0 and r.err.count("\n") == 1, r.err
        assert ("jetson.power_mode: the orin-nano-8gb (Super board config) has nvpmodel "
                f"modes 0 15W, 1 25W, 2 MAXN_SUPER; not {mode}") in r.err
    else:
        assert r.code == 0, r.err
