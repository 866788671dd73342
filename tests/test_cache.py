"""The artifact cache with cheap builds: hits, invalidation, corruption, failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.cache import Cache, key_of


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


class Builder:
    """A build function that counts its calls and writes its inputs to a file."""

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def __call__(self, out: Path, log_file: Path) -> dict:
        self.calls += 1
        log_file.write_text("compiling...\n")
        (out / "bin").mkdir()
        (out / "bin" / "tool").write_text(f"build {self.calls}\n")
        if self.fail:
            raise RuntimeError("compiler crashed")
        return {"note": "extra"}


def test_second_request_is_a_hit_without_building(cache: Cache) -> None:
    b = Builder()
    first = cache.get_or_build("engines", {"src": "a"}, b, label="x")
    second = cache.get_or_build("engines", {"src": "a"}, b, label="x")
    assert b.calls == 1
    assert (first.hit, second.hit) == (False, True)
    assert second.path == first.path and (second.out / "bin/tool").read_text() == "build 1\n"
    assert second.manifest["note"] == "extra"
    assert second.manifest["outputs"]["bin/tool"]["size"] == 8


def test_changing_any_input_builds_a_new_entry(cache: Cache) -> None:
    b = Builder()
    a = cache.get_or_build("engines", {"src": "a", "flags": ["-O2"]}, b, label="x")
    c = cache.get_or_build("engines", {"src": "a", "flags": ["-O3"]}, b, label="x")
    assert b.calls == 2 and a.path != c.path
    assert len(cache.entries()) == 2


def test_key_ignores_dict_order_but_not_values() -> None:
    assert key_of("k", {"a": 1, "b": 2}) == key_of("k", {"b": 2, "a": 1})
    assert key_of("k", {"a": 1}) != key_of("k", {"a": 2})
    assert key_of("k", {"a": 1}) != key_of("other", {"a": 1})


def test_corrupted_entry_is_detected_and_rebuilt(cache: Cache,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    b = Builder()
    e = cache.get_or_build("engines", {"src": "a"}, b, label="x")
    (e.out / "bin/tool").write_text("tampered\n")
    assert e.problems() == ["bin/tool: sha256 mismatch"]
    again = cache.get_or_build("engines", {"src": "a"}, b, label="x")
    assert b.calls == 2 and not again.hit
    assert (again.out / "bin/tool").read_text() == "build 2\n"
    assert "corrupted" in caplog.text


def test_missing_output_counts_as_corruption(cache: Cache) -> None:
    b = Builder()
    e = cache.get_or_build("engines", {"src": "a"}, b, label="x")
    (e.out / "bin/tool").unlink()
    assert cache.lookup("engines", {"src": "a"}) is None
    assert b.calls == 1 and not e.path.exists()


def test_failed_build_leaves_no_entry_but_keeps_its_log(cache: Cache) -> None:
    with pytest.raises(RuntimeError):
        cache.get_or_build("engines", {"src": "bad"}, Builder(fail=True), label="x")
    assert cache.entries() == []
    assert not list((cache.root / "engines").glob(".tmp-*"))
    log = cache.failed_log("engines", {"src": "bad"})
    assert log.read_text() == "compiling...\n"


def test_prune_removes_old_entries_and_interrupted_builds(cache: Cache) -> None:
    old = cache.get_or_build("engines", {"src": "old"}, Builder(), label="old")
    new = cache.get_or_build("engines", {"src": "new"}, Builder(), label="new")
    os.utime(old.path / "manifest.json", (0, 0))
    stale = cache.root / "engines" / ".tmp-deadbeef-999999999"
    stale.mkdir()
    removed = [what for what, _ in cache.prune(older_than_days=30)]
    assert len(removed) == 2 and removed[0].endswith(" old")
    assert removed[1].endswith("(interrupted build)")
    assert not old.path.exists() and new.path.exists() and not stale.exists()
    assert cache.prune(everything=True, dry_run=True)[0][0].endswith("new")
    assert new.path.exists()


def test_a_slot_keeps_its_last_used_entries_and_leaves_other_slots(cache: Cache) -> None:
    def made(src: str, slot: str):
        e = cache.get_or_build("delivery", {"src": src}, Builder(), label=src,
                               keep=(slot, 2))
        e.release()
        return e

    a, b = made("a", "x86/gw"), made("b", "x86/gw")
    other = made("o", "x86/other")
    unslotted = cache.get_or_build("delivery", {"src": "u"}, Builder(), label="u")
    os.utime(a.path / "manifest.json", (1, 1))
    os.utime(b.path / "manifest.json", (2, 2))
    assert made("a", "x86/gw").hit  # a use: now b is the oldest
    c = made("c", "x86/gw")
    assert a.path.exists() and c.path.exists() and not b.path.exists()
    assert other.path.exists() and unslotted.path.exists()
    assert c.manifest["slot"] == "x86/gw"


def test_an_entry_held_by_a_build_is_not_evicted_until_it_is_released(cache: Cache) -> None:
    """A build holds the entries it reads (a tarball it unpacks later); another build of
    the profile that would evict them leaves them, and the next one after the release
    does not."""
    a = cache.get_or_build("delivery", {"src": "a"}, Builder(), label="a", keep=("s", 1))
    os.utime(a.path / "manifest.json", (1, 1))
    b = cache.get_or_build("delivery", {"src": "b"}, Builder(), label="b", keep=("s", 1))
    b.release()
    assert a.path.exists() and (a.out / "bin/tool").read_text() == "build 1\n"
    a.release()
    os.utime(a.path / "manifest.json", (1, 1))
    cache.get_or_build("delivery", {"src": "c"}, Builder(), label="c", keep=("s", 1)).release()
    assert not a.path.exists() and not b.path.exists()


def test_a_hit_is_held_too(cache: Cache) -> None:
    cache.get_or_build("delivery", {"src": "a"}, Builder(), label="a", keep=("s", 1)).release()
    hit = cache.get_or_build("delivery", {"src": "a"}, Builder(), label="a", keep=("s", 1))
    assert hit.hit and hit.held is not None
    os.utime(hit.path / "manifest.json", (1, 1))
    cache.get_or_build("delivery", {"src": "b"}, Builder(), label="b", keep=("s", 1)).release()
    assert hit.path.exists()


def test_cache_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_LLM_CACHE", str(tmp_path / "elsewhere"))
    assert Cache().root == tmp_path / "elsewhere"


def test_cli_verify_reports_corruption_in_one_line(cache: Cache, cli) -> None:
    e = cache.get_or_build("engines", {"src": "a"}, Builder(), label="llama.cpp test")
    r = cli("cache", "verify", "--cache-dir", str(cache.root))
    assert r.code == 0 and "ok engines/" in r.out
    (e.out / "bin/tool").write_text("tampered\n")
    r = cli("cache", "verify", "--cache-dir", str(cache.root))
    assert r.code == 2
    assert "corrupted engines/" in r.out and "bin/tool: sha256 mismatch" in r.out
    assert r.err == ("error: 1 corrupted cache entry; they are rebuilt on next use, or "
                     "remove them with `builder cache prune`\n")


def test_cli_list_and_prune(cache: Cache, cli) -> None:
    cache.get_or_build("engines", {"src": "a"}, Builder(), label="llama.cpp test")
    r = cli("cache", "list", "--cache-dir", str(cache.root), "--json")
    assert r.code == 0 and '"label": "llama.cpp test"' in r.out
    r = cli("cache", "prune", "--cache-dir", str(cache.root))
    assert (r.code, r.err) == (2, "error: say what to prune: --older-than DAYS or --all\n")
    r = cli("cache", "prune", "--all", "--cache-dir", str(cache.root))
    assert r.code == 0 and cache.entries() == []
