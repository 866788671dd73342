"""The verify suite's fixtures and hooks, as a pytest plugin (`-p
builder.verify.suite.plugin`, run_suite): what the appliance must be, read from the
build's manifest.json. A plugin rather than a conftest.py so that checks a target adds
from its own package (contracts.Target.verify_checks) get them too."""

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
def layout(manifest) -> dict:
    """Where things are on the device (builder/device/layout.py, as built)."""
    return manifest["layout"]


@pytest.fixture(scope="session")
def engine_port(manifest) -> int:
    return manifest["inputs"]["profile"]["service"]["engine_port"]


@pytest.fixture(scope="session")
def api_auth(manifest) -> bool:
    """Whether the public port asks for an API key (the profile's service.api_auth)."""
    return manifest["inputs"]["profile"]["service"]["api_auth"]


@pytest.fixture(scope="session")
def probe(manifest) -> dict:
    """The engine's readiness and liveness paths (its engine module's Probe)."""
    return manifest["engine"]["probe"]


@pytest.fixture(scope="session")
def thresholds(cfg, manifest) -> dict:
    """verify.* of the profile as given to `builder verify` (else as built)."""
    return cfg.get("verify") or manifest["inputs"]["profile"]["verify"]


@pytest.fixture(scope="session")
def api_url(cfg) -> str:
    """Where this machine reaches the device's public port (the gateway)."""
    return cfg["api_url"]


@pytest.fixture(scope="module")
def api_key(host, layout) -> str:
    """The device's own API key (made at its first boot), read over SSH as root and as
    the gateway reads it (builder/device/api_keys.py): the first key."""
    from builder.device import api_keys

    path = layout["api_keys"]
    return api_keys.parse(host.check_output(f"cat {path}").encode(), path)[0]


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
            layout = item.funcargs.get("layout") or {}
            for unit in (layout.get("engine_unit", "edge-llm-engine.service"),
                         layout.get("gateway_unit", "edge-llm-gateway.service")):
                journal = host.run(f"journalctl -u {unit} -n 40 --no-pager")
                report.sections.append((f"{unit} journal", journal.stdout))


_JOURNAL = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config, items) -> None:
    """The agreement check (test_answers.py) is part of the suite only when
    verify.min_agreement gave it reference answers: otherwise it is left out, not
    skipped (a device's report counts the checks it was held to)."""
    cfg = json.loads(os.environ.get("EDGE_LLM_VERIFY") or "{}")
    if cfg.get("answers"):
        return
    left = [i for i in items if i.path.name == "test_answers.py"]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [i for i in items if i.path.name != "test_answers.py"]
