"""An example engine, outside the builder: everything a new inference engine supplies,
in one package (plus a profile). `tests/test_example_engine.py` loads it through
EDGE_LLM_ENGINES and drives the real commands with it - validate, plan, engine build
and recipe, a signed release, a deploy onto a booted appliance and `builder verify` -
which proves that adding an engine touches nothing else.

"pyecho" is server.py beside this file: a small OpenAI-compatible server in Python's
standard library that loads a GGUF file's header and vocabulary and answers with tokens
from it. Its build packs server.py into a zipapp (Python's own zipapp tool), cached like
any engine build; a release carries the zipapp, the device runs it with its python3.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from builder.cache import sha256_file
from builder.contracts import Engine, EngineArtifact, Platform, Probe, Quantization
from builder.errors import BuilderError
from builder.model.catalog import ModelArch
from builder.model.pipeline import ModelArtifact
from builder.model.shape import ModelShape
from builder.run import run
from builder.schema import EngineSettings, Profile
from builder.units import MiB

from . import server

if TYPE_CHECKING:
    from builder.cache import Cache
    from builder.contracts import PlanInput, ReleaseInputs
    from builder.device.layout import Layout
    from builder.model.catalog import Tensor
    from builder.model.pipeline import Fetched

SERVER = Path(server.__file__)
ZIPAPP = "pyecho.pyz"
OVERHEAD = 48 * MiB  # the Python process, its threads and the vocabulary (measured ~25 MiB)


class PyEchoSettings(EngineSettings):
    words_per_second: float = Field(0, ge=0, description="Pace of a streamed reply (0: as "
                                    "fast as it can).")


@dataclass(frozen=True)
class PyEchoRecipe:
    arch: str
    source_sha256: str
    on_device: bool = False
    notes: list[str] = field(default_factory=lambda: [
        "packs server.py into a zipapp; the device runs it with its own python3"])

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "notes"}

    def commands(self) -> list[str]:
        return [f"python3 -m zipapp SRC -o bin/{ZIPAPP} -p /usr/bin/python3"]


class PyEcho(Engine):
    kind = "pyecho"
    section = "pyecho"
    settings = PyEchoSettings
    probe = Probe(ready="/health", alive="/metrics")
    model_format = "gguf"
    quants = (Quantization("as-given", 0.0, "the GGUF file as given; only its header and "
                           "vocabulary are read"),)

    def version(self, p: Profile) -> str:
        return f"pyecho {sha256_file(SERVER)[:12]}"

    def runs_on(self, platform: Platform) -> str | None:
        return None  # any CPU with a python3

    # --- weights: it reads none, so none are sized ------------------------------------------
    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        return []

    def shape_of(self, path: Path, quant: str) -> ModelShape:
        try:
            h = server.read_header(str(path))
        except (OSError, ValueError) as e:
            raise BuilderError(f"{path}: pyecho reads a GGUF file's header: {e}") from None
        a = h.get("general.architecture", "")

        def num(key: str) -> int:
            value = h.get(f"{a}.{key}")
            if not isinstance(value, int):
                raise BuilderError(f"{path}: the GGUF header has no {a}.{key}")
            return value

        n_head = num("attention.head_count")
        arch = ModelArch(id=path.stem, hf_repo="", n_layer=num("block_count"),
                         n_embd=num("embedding_length"), n_head=n_head,
                         n_head_kv=h.get(f"{a}.attention.head_count_kv", n_head),
                         n_ff=num("feed_forward_length"),
                         n_vocab=len(h.get("tokenizer.ggml.tokens") or []),
                         tied_embeddings=True, max_context=num("context_length"),
                         published_params=a)
        return ModelShape(id=path.stem, arch=arch, quant=quant, weights=0, origin="file")

    # --- building: a zipapp ------------------------------------------------------------------
    def recipe(self, p: Profile, platform: Platform) -> PyEchoRecipe:
        return PyEchoRecipe(arch="all", source_sha256=sha256_file(SERVER))

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact:
        r = self.recipe(p, platform)

        def do_build(out: Path, log_file: Path) -> dict[str, Any]:
            src = out.parent / "src"
            src.mkdir()
            shutil.copy(SERVER, src / "__main__.py")
            (out / "bin").mkdir()
            run(["python3", "-m", "zipapp", src, "-o", out / "bin" / ZIPAPP,
                 "-p", "/usr/bin/python3"], what="python3 -m zipapp", log_file=log_file)
            shutil.rmtree(src)
            (out / "engine.json").write_text(json.dumps(r.to_json(), indent=2))
            return {"engine": r.to_json()}

        entry = cache.get_or_build("engines", {"engine": self.kind, **r.to_json()}, do_build,
                                   label="pyecho zipapp")
        return EngineArtifact(entry, r)

    # --- the model: a GGUF file given with --model-file ---------------------------------------
    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        if fetched.kind != "gguf":
            raise BuilderError(f"{fetched.origin}: pyecho serves a GGUF file; give one "
                               "with --model-file")
        return ModelArtifact(fetched.path, fetched.gguf_sha256, "as-given", "gguf")

    # --- on the device ---------------------------------------------------------------------
    def release_files(self, i: ReleaseInputs, tree: Path) -> None:
        assert i.engine_dir is not None
        shutil.copytree(i.engine_dir / "bin", tree / "bin")

    def env(self, i: ReleaseInputs, layout: Layout) -> dict[str, str]:
        s = self.settings_of(i.profile)
        return {"PYECHO_MODEL": f"{layout.model_dir}/{i.model.device_name}",
                "PYECHO_MODEL_SHA256": i.model.sha256,
                "PYECHO_PORT": str(i.profile.service.engine_port),
                "PYECHO_ALIAS": i.model_id,
                "PYECHO_WORDS_PER_SECOND": f"{s.words_per_second:g}"}

    def exec_start(self, i: ReleaseInputs, layout: Layout) -> str:
        return f"/usr/bin/python3 {layout.current}/bin/{ZIPAPP} --host 127.0.0.1"

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        # OpenAI's fields only: none of the gateway's extension fields reach it
        return {**super().gateway_settings(layout), "engine_fields": []}

    def start_timeout(self, p: Profile) -> int:
        return 120

    # --- memory: a Python process and a vocabulary ------------------------------------------
    def memory(self, pin: PlanInput) -> dict[str, int]:
        return {"weights": 0, "repacked": 0, "kv_per_slot": 0, "kv_total": 0,
                "compute": 0, "output": 0, "engine_overhead": OVERHEAD}


ENGINE = PyEcho()
