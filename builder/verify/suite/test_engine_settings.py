"""The engine runs with the settings of the release it serves: the environment its
release gives it (engine.env, which the unit reads), the same as the release this
machine made, nothing changed on the device.
These carry every runtime setting of the profile, a tuned overlay's included
(`tuned:`, docs/tune.md), so a device whose engine runs other settings fails here."""

from __future__ import annotations

from pathlib import Path

from builder.verify.suite.engine_env import mismatches, parse_env_file, parse_environ


def _engine_pid(host, layout) -> str:
    pid = host.check_output(f"systemctl show -p MainPID --value {layout['engine_unit']}")
    assert pid.strip() not in ("", "0"), "the engine is not running"
    return pid.strip()


def test_the_engine_runs_with_the_environment_of_its_release(host, manifest, layout) -> None:
    current = f"{layout['engine_root']}/current"
    on_device = parse_env_file(host.check_output(f"cat {current}/engine.env"))
    built = Path((manifest.get("release") or {}).get("dir") or "/nonexistent") / "tree" \
        / "engine.env"
    if built.is_file():  # the release as this machine made it (tuned settings included)
        assert on_device == parse_env_file(built.read_text()), (
            f"{current}/engine.env is not the release's ({built})")
    environ = parse_environ(host.check_output(
        f"tr '\\0' '\\n' < /proc/{_engine_pid(host, layout)}/environ"))
    assert mismatches(on_device, environ) == []

