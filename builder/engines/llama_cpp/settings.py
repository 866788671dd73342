"""llama.cpp's profile section, `engine.llama_cpp:`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...schema import EngineSettings

# llama.cpp as vendored in this llama-cpp-python sdist on PyPI (upstream 0c1e57098).
LLAMA_CPP_PYPI = "llama-cpp-python==0.3.36"
LLAMA_CPP_PYPI_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


class LlamaCppSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["pypi-sdist", "path", "git"] = Field(
        "pypi-sdist", description="'pypi-sdist': the llama.cpp tree vendored in a PyPI "
        "sdist (fetched with pip); 'path': a local directory or tarball; 'git': url + ref.")
    package: str = Field(LLAMA_CPP_PYPI, description="pypi-sdist: requirement, pinned "
                         "with ==.")
    sha256: str | None = Field(
        LLAMA_CPP_PYPI_SHA256, pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the sdist or tarball; the build refuses anything else.")
    path: str | None = Field(None, description="path: directory or .tar.gz of a llama.cpp "
                             "tree (relative to the profile file).")
    url: str | None = Field(None, description="git: repository URL.")
    ref: str | None = Field(None, description="git: tag or commit to check out.")


class LlamaCppSettings(EngineSettings):
    source: LlamaCppSource = Field(default_factory=LlamaCppSource,
                                   description="Where the llama.cpp source comes from.")
    cmake_args: list[str] = Field(default_factory=list,
                                  description="Extra -D options passed to CMake (after the "
                                  "target's own, so they win).")
