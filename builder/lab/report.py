"""The reports of a lab run (lab.py), from its run.json and device records alone: JUnit
XML (one testcase per device per step), Markdown, and a static HTML page with nothing
external (inline CSS, an inline SVG chart of decode tok/s against each profile's bar).
The same records give the same bytes, so a sample report can be checked against them."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ..units import format_size

FILES = ("junit.xml", "report.md", "report.html")


# --- shared wording -------------------------------------------------------------------------

def attempt_of(meta: dict[str, Any]) -> dict[str, Any]:
    return (meta.get("attempts") or [{}])[-1]


def passed_count(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r.get("passed"))


def summary(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    n, ok = len(records), passed_count(records)
    if ok == n:
        return f"all {n} device(s) passed every step"
    failed = [r["device"] for r in records if not r.get("passed")]
    return f"{ok} of {n} device(s) passed; not passed: {', '.join(failed)}"


def step_cell(s: dict[str, Any], attempt: int) -> str:
    """A step in one short phrase: passed (12s), passed in attempt 1, failed, not run."""
    if s["status"] == "passed":
        if s.get("attempt") != attempt:
            return f"passed in attempt {s.get('attempt')}"
        return f"passed ({s.get('seconds', 0):.0f}s)"
    return s["status"]


def _value(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    if name.endswith("bytes"):
        return format_size(int(v))
    return f"{v:g}"


def check_cells(r: dict[str, Any]) -> dict[str, tuple[str, str, bool | None]]:
    """Per check: (measured, bar, passed) as text; passed None when not measured."""
    out = {}
    for c in r.get("checks") or []:
        out[c["name"]] = (_value(c["name"], c["measured"]),
                          f"{c['op'].replace('>=', '≥').replace('<=', '≤')} "
                          f"{_value(c['name'], c['bar'])}", c["ok"])
    return out


def prefill(b: dict[str, Any]) -> str:
    """Prefill tok/s of the uncached long prompt, with its length (no bar holds it)."""
    if b.get("prefill_tps") is None:
        return "-"
    return f"{b['prefill_tps']:g} ({b.get('prefill_prompt_tokens', '?')} tokens)"


def engine_build(r: dict[str, Any]) -> str:
    b = r.get("benchmark") or {}
    if b.get("engine_build_seconds") is not None:
        return f"{b['engine_build_seconds']:g}s on the device"
    if b.get("engine_built_on") == "device":
        return "on the device (cached)"
    return "on the build host" if b else "-"


def tuned(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What `lab run --tune` found, a row per device grouped by profile (a profile is a
    device model): the settings chosen, decode at the typical depth and prefill, defaults
    against tuned, and the overlay."""
    from ..tune import chosen, describe

    rows = []
    for r in sorted((r for r in records if r.get("tune")), key=lambda r: r["profile"]):
        t = r["tune"]
        dev, d, b = t.get("device") or {}, t.get("default") or {}, t.get("tuned") or {}

        def pair(key: str, d: dict = d, b: dict = b) -> str:
            x, y = d.get(key), b.get(key)
            if not (isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0):
                return "-"
            return f"{x:g} → {y:g} ({y / x:.2f}x)"

        rows.append({"profile": r["profile"], "device": r["device"],
                     "cpu": f"{dev.get('cpu', '?')}, {dev.get('cores', '?')} CPUs",
                     "settings": describe(chosen(t), {}),
                     "depth": str((t.get("test") or {}).get("depth", "?")),
                     "decode": pair("decode_tps"), "prefill": pair("prefill_tps"),
                     "overlay": t.get("overlay", "")})
    return rows


def step_names(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The columns after the first step: a tune column when any device was tuned."""
    tuning = any(s["name"] == "tune" for r in records for s in r["steps"])
    return ("ready", "verify", "benchmark", *(("tune",) if tuning else ()))


# --- JUnit ----------------------------------------------------------------------------------

def junit(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    attempt = attempt_of(meta).get("attempt", 1)
    cases = [(r, s) for r in records for s in r["steps"]]
    suite = ElementTree.Element("testsuite", {
        "name": f"lab {meta.get('run_id', '')}".strip(), "tests": str(len(cases)),
        "failures": str(sum(s["status"] == "failed" for _, s in cases)), "errors": "0",
        "skipped": str(sum(s["status"] == "not run" for _, s in cases)),
        "time": f"{sum(s.get('seconds', 0) for _, s in cases if s.get('attempt') == attempt):.1f}"})
    for r, s in cases:
        kept = s["status"] == "passed" and s.get("attempt") != attempt
        tc = ElementTree.SubElement(suite, "testcase", {
            "classname": f"lab.{r['device']}", "name": s["name"],
            "time": "0" if kept else f"{s.get('seconds', 0):.1f}"})
        props = {"profile": r["profile"], "flash": r["flash"], "attempt": s.get("attempt")}
        if s["name"] == "benchmark":
            props.update({c["name"]: c["measured"] for c in r.get("checks") or []})
        pe = ElementTree.SubElement(tc, "properties")
        for k, v in props.items():
            if v is not None:
                ElementTree.SubElement(pe, "property", {"name": k, "value": str(v)})
        if s["status"] == "failed":
            ElementTree.SubElement(tc, "failure", {"message": s.get("detail", "")}).text = \
                s.get("detail", "")
        elif s["status"] == "not run":
            ElementTree.SubElement(tc, "skipped", {"message": s.get("detail", "not run")})
        else:
            out = ElementTree.SubElement(tc, "system-out")
            out.text = (f"passed in attempt {s.get('attempt')}, kept: " if kept else "") + \
                s.get("detail", "")
    root = ElementTree.Element("testsuites")
    root.append(suite)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# --- Markdown -------------------------------------------------------------------------------

def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    a = attempt_of(meta)
    attempt = a.get("attempt", 1)
    lines = [f"# Lab run {meta.get('run_id', '')}", "",
             f"Inventory `{meta.get('inventory', '?')}`, {len(records)} device(s), attempt "
             f"{attempt} ({a.get('started', '?')} to {a.get('finished', '?')}).", "",
             f"**Result: {summary(meta, records)}.**", "",
             "| device | profile | reached by | release | flash / deploy | "
             + " | ".join(step_names(records)) + " |",
             "|---|---|---|---|---|" + "---|" * len(step_names(records))]
    for r in records:
        steps = {s["name"]: s for s in r["steps"]}
        first = r["steps"][0] if r["steps"] else {"status": "not run"}
        cells = [step_cell(first, attempt)] + [
            step_cell(steps[n], attempt) if n in steps else "-"
            for n in step_names(records)]
        v = r.get("verify")
        if v and steps.get("verify", {}).get("status") in ("passed", "failed"):
            cells[2] += f", {v['tests'] - len(v['failed'])}/{v['tests']} checks"
        lines.append(f"| {r['device']} | {r['profile']} | {r['flash']} | {r['release_id']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## Benchmark against the profile's bar", "",
              "| device | model | decode tok/s | bar | TTFT p50 / p95 ms | bar | prefill "
              "tok/s | engine peak RSS | bar | engine build |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c = check_cells(r)
        b = r.get("benchmark") or {}

        def mark(name: str, c: dict = c) -> str:
            if name not in c:
                return "-"
            value, _, ok = c[name]
            return f"{value} {'✓' if ok else '✗'}"

        ttft = (f"{_value('', b.get('ttft_ms_p50'))} / {_value('', b.get('ttft_ms_p95'))} "
                f"{'✓' if c['ttft_ms_p50'][2] else '✗'}" if b and "ttft_ms_p50" in c else "-")
        lines.append(f"| {r['device']} | {r.get('model', '-')} | {mark('decode_tps')} | "
                     f"{c.get('decode_tps', ('', '-'))[1]} | {ttft} | "
                     f"{c.get('ttft_ms_p50', ('', '-'))[1]} | {prefill(b)} | "
                     f"{mark('peak_rss_bytes')} | "
                     f"{c.get('peak_rss_bytes', ('', '-'))[1]} | {engine_build(r)} |")
    bench = next((r["benchmark"] for r in records if r.get("benchmark")), None)
    if bench:
        lines += ["", f"Each benchmark: one request to warm up, then {bench['requests']} "
                      f"streamed requests of up to {bench['max_tokens']} tokens, one at a "
                      "time, through the public port. Decode tok/s is the median over the "
                      "requests (tokens after the first, per second); the bar is the "
                      "profile's `verify.min_decode_tps`, `verify.max_ttft_ms` (held to the "
                      "p50) and `verify.max_rss` (auto: the plan's engine share)."]
    rows = tuned(records)
    if rows:
        lines += ["", "## Tuned runtime settings (builder tune)", "",
                  "| profile | device | CPU | tuned settings | depth | decode tok/s at depth "
                  "| prefill tok/s | overlay |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row['profile']} | {row['device']} | {_md(row['cpu'])} | "
                  f"{_md(row['settings'])} | {row['depth']} | {row['decode']} | "
                  f"{row['prefill']} | `{row['overlay']}` |" for row in rows]
        lines += ["", "Defaults → tuned, measured on the device with its release's "
                  "llama-bench (its engine stopped meanwhile). A profile takes an overlay "
                  "with `tuned: FILE` (docs/tune.md)."]
    lines += ["", "## Steps"]
    for r in records:
        lines += ["", f"### {r['device']}", "",
                  f"{r['profile']} ({r.get('engine', '?')}, {r.get('model', '?')}), "
                  f"{r['flash']}, `ssh://{r.get('user', '?')}@{r['host']}:{r['port']}`, "
                  f"public port {r.get('api_url', '?')}; attempts "
                  f"{', '.join(map(str, r.get('attempts', [])))}.", "",
                  "| step | result | attempt | seconds | detail |", "|---|---|---|---|---|"]
        for s in r["steps"]:
            lines.append(f"| {s['name']} | {s['status']} | {s.get('attempt', '-')} | "
                         f"{s.get('seconds', '-')} | {_md(s.get('detail', ''))} |")
    return "\n".join(lines) + "\n"


def embedded(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The Markdown report as a section of another page (docs/lab.md): its headings three
    levels down, so they sit under the page's own."""
    return "".join("###" + line if line.startswith("#") else line
                   for line in markdown(meta, records).splitlines(keepends=True))


BEGIN, END = "<!-- lab-sample:begin -->\n", "<!-- lab-sample:end -->"


def embed(page: str, meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """`page` (docs/lab.md) with the section between its lab-sample markers replaced by
    the embedded report."""
    head, rest = page.split(BEGIN, 1)
    return head + BEGIN + embedded(meta, records) + END + rest.split(END, 1)[1]


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
margin:2rem auto;max-width:1100px;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;font-size:1.2rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{border:1px solid #d5dae1;padding:.35rem .55rem;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.passed{color:#0d6b2f;font-weight:600}.failed{color:#b3261e;font-weight:700}
.notrun{color:#6b7280}.kept{color:#0d6b2f}
.banner{padding:.6rem .9rem;border-radius:6px;font-weight:600;margin:1rem 0}
.banner.ok{background:#e4f5e9;color:#0d6b2f}.banner.bad{background:#fde8e7;color:#b3261e}
.meta{color:#4b5563}.detail{font-size:.9em;color:#374151}
svg text{font:13px system-ui,sans-serif;fill:#1d2430}
"""


def _cls(status: str, kept: bool) -> str:
    return "kept" if kept else {"passed": "passed", "failed": "failed"}.get(status, "notrun")


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `raw`."""
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def chart(records: list[dict[str, Any]]) -> str:
    """An inline SVG: per device, a bar of measured decode tok/s (green at or above the
    profile's min_decode_tps, red under it) and a dark tick at that bar."""
    rows = []
    for r in records:
        c = {x["name"]: x for x in r.get("checks") or []}.get("decode_tps")
        bar = (r.get("thresholds") or {}).get("min_decode_tps")
        rows.append((r["device"], c["measured"] if c else None, bar, bool(c and c["ok"])))
    step = nice_step(max([v for _, v, _, _ in rows if v is not None] +
                         [b for _, _, b, _ in rows if b is not None] + [1.0]) * 1.1 / 4)
    top = step * 4
    left, width, row_h, head = 150, 560, 34, 30
    height = head + row_h * len(rows) + 30
    total = left + width + 130
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}" '
             f'viewBox="0 0 {total} {height}" role="img" aria-label="decode tokens per '
             'second per device against the profile\'s bar">',
             f'<text x="{left}" y="18">decode tok/s (bars) against the profile\'s '
             'verify.min_decode_tps (dark tick)</text>']
    for i in range(5):  # gridlines and their values
        x = left + width * i / 4
        parts.append(f'<line x1="{x:.1f}" y1="{head}" x2="{x:.1f}" '
                     f'y2="{height - 24}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
                     f'{step * i:g}</text>')
    for n, (name, value, bar, ok) in enumerate(rows):
        y = head + n * row_h + 6
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{e(name)}</text>')
        if value is None:
            parts.append(f'<text x="{left + 6}" y="{y + 16}" fill="#6b7280">not measured'
                         '</text>')
        else:
            w = max(1.0, width * value / top)
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="22" rx="2" '
                         f'fill="{"#2e9d55" if ok else "#d0433a"}"/>')
            parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 16}">{value:g}</text>')
        if bar is not None:
            x = left + width * bar / top
            parts.append(f'<line x1="{x:.1f}" y1="{y - 3}" x2="{x:.1f}" y2="{y + 25}" '
                         'stroke="#1d2430" stroke-width="3"/>')
            parts.append(f'<text x="{left + width + 14}" y="{y + 16}" fill="#4b5563">bar '
                         f'≥ {bar:g}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_page(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    e = html.escape
    a = attempt_of(meta)
    attempt = a.get("attempt", 1)
    ok = passed_count(records) == len(records)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Lab run {e(meta.get('run_id', ''))}</title>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<style>{CSS}</style></head><body>",
           f"<h1>Lab run {e(meta.get('run_id', ''))}</h1>",
           f'<p class="meta">Inventory <code>{e(meta.get("inventory", "?"))}</code>, '
           f"{len(records)} device(s), attempt {attempt} ({e(a.get('started', '?'))} to "
           f"{e(a.get('finished', '?'))}).</p>",
           f'<div class="banner {"ok" if ok else "bad"}">{e(summary(meta, records))}</div>',
           "<h2>Devices</h2>", "<table><tr><th>device</th><th>profile</th><th>reached by</th>"
           "<th>release</th><th>flash / deploy</th>"
           + "".join(f"<th>{n}</th>" for n in step_names(records)) + "</tr>"]
    for r in records:
        cells = []
        for s in r["steps"]:
            kept = s["status"] == "passed" and s.get("attempt") != attempt
            text = step_cell(s, attempt)
            v = r.get("verify")
            if s["name"] == "verify" and v and s["status"] in ("passed", "failed"):
                text += f", {v['tests'] - len(v['failed'])}/{v['tests']} checks"
            cells.append(f'<td class="{_cls(s["status"], kept)}" title="{e(s.get("detail", ""))}">'
                         f"{e(text)}</td>")
        out.append(f"<tr><td><b>{e(r['device'])}</b></td><td>{e(r['profile'])}</td>"
                   f"<td>{e(r['flash'])}</td><td><code>{e(r['release_id'])}</code></td>"
                   + "".join(cells) + "</tr>")
    out += ["</table>", "<h2>Benchmark against the profile's bar</h2>", chart(records),
            "<table><tr><th>device</th><th>model</th><th>decode tok/s</th><th>bar</th>"
            "<th>TTFT p50 / p95 ms</th><th>bar</th><th>prefill tok/s</th>"
            "<th>engine peak RSS</th><th>bar</th>"
            "<th>engine build</th></tr>"]
    for r in records:
        c = check_cells(r)
        b = r.get("benchmark") or {}

        def cell(name: str, text: str | None = None, c: dict = c) -> str:
            if name not in c:
                return '<td class="num notrun">-</td><td class="num">-</td>'
            value, bar, good = c[name]
            return (f'<td class="num {"passed" if good else "failed"}">{e(text or value)} '
                    f'{"✓" if good else "✗"}</td><td class="num">{e(bar)}</td>')

        ttft = f"{_value('', b.get('ttft_ms_p50'))} / {_value('', b.get('ttft_ms_p95'))}"
        out.append(f"<tr><td><b>{e(r['device'])}</b></td><td>{e(r.get('model', '-'))}</td>"
                   f"{cell('decode_tps')}{cell('ttft_ms_p50', ttft)}"
                   f'<td class="num">{e(prefill(b))}</td>{cell("peak_rss_bytes")}'
                   f"<td>{e(engine_build(r))}</td></tr>")
    out.append("</table>")
    rows = tuned(records)
    if rows:
        out += ["<h2>Tuned runtime settings (builder tune)</h2>",
                "<table><tr><th>profile</th><th>device</th><th>CPU</th><th>tuned settings</th>"
                "<th>depth</th><th>decode tok/s at depth</th><th>prefill tok/s</th>"
                "<th>overlay</th></tr>"]
        out += [f"<tr><td>{e(row['profile'])}</td><td><b>{e(row['device'])}</b></td>"
                f"<td>{e(row['cpu'])}</td><td>{e(row['settings'])}</td>"
                f'<td class="num">{e(row["depth"])}</td><td class="num">{e(row["decode"])}</td>'
                f'<td class="num">{e(row["prefill"])}</td><td><code>{e(row["overlay"])}</code>'
                "</td></tr>" for row in rows]
        out.append("</table>")
    out += ["<h2>Steps</h2>"]
    for r in records:
        out += [f"<h3>{e(r['device'])}</h3>",
                f'<p class="meta">{e(r["profile"])} ({e(r.get("engine", "?"))}, '
                f'{e(r.get("model", "?"))}), {e(r["flash"])}, '
                f"<code>ssh://{e(str(r.get('user', '?')))}@{e(r['host'])}:{r['port']}</code>, "
                f"public port <code>{e(r.get('api_url', '?'))}</code>; attempts "
                f"{e(', '.join(map(str, r.get('attempts', []))))}.</p>",
                "<table><tr><th>step</th><th>result</th><th>attempt</th><th>seconds</th>"
                "<th>detail</th></tr>"]
        for s in r["steps"]:
            kept = s["status"] == "passed" and s.get("attempt") != attempt
            out.append(f"<tr><td>{e(s['name'])}</td><td class=\"{_cls(s['status'], kept)}\">"
                       f"{e(s['status'])}</td><td class=\"num\">{s.get('attempt', '-')}</td>"
                       f"<td class=\"num\">{s.get('seconds', '-')}</td>"
                       f"<td class=\"detail\">{e(s.get('detail', ''))}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(run_dir: Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> list[Path]:
    """junit.xml, report.md and report.html in the run directory."""
    texts = {"junit.xml": junit(meta, records), "report.md": markdown(meta, records),
             "report.html": html_page(meta, records)}
    paths = []
    for name in FILES:
        p = run_dir / name
        p.write_text(texts[name])
        paths.append(p)
    return paths
