"""What the appliance must be, read from the build's manifest.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cfg() -> dict:
    return json.loads(os.environ["EDGE_LLM_VERIFY"])


@pytest.fixture(scope="session")
def manifest(cfg) -> dict:
    return json.loads(Path(cfg["manifest"]).read_text())


@pytest.fixture(scope="session")
def engine_port(manifest) -> int:
    return manifest["provision_vars"]["inference_port"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On the first failure, attach the engine's journal to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and not item.session.config.stash.get(
            _JOURNAL, False):
        item.session.config.stash[_JOURNAL] = True
        host = item.funcargs.get("host")
        if host is not None:
            journal = host.run("journalctl -u edge-llm-engine.service -n 40 --no-pager")
            report.sections.append(("edge-llm-engine journal", journal.stdout))


_JOURNAL = pytest.StashKey[bool]()
