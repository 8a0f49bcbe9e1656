"""The load benchmark's report: a summary of ratios with their spread over rounds, then every row.

Each ratio is computed within a round (pgsluice and PgBouncer measured minutes apart, in alternating
order), then summarised over the rounds as median [min–max], so one noisy minute shows as spread.
"""
import statistics


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def _num(x, fmt="{:.1f}"):
    return fmt.format(x) if x is not None else "–"


def _rounds(results):
    return sorted({r.get("round", 0) for r in results})


def _get(results, scenario, title, target, rnd):
    for r in results:
        if (r["scenario"], r["title"], r["target"], r.get("round", 0)) == (scenario, title, target, rnd):
            return r
    return None


def _ratio(x, y):
    return x / y if x and y else None


def _bouncer(results, scenario, title, rnd):
    return _get(results, scenario, title, "pgbouncer", rnd) or _get(results, scenario, title, "pgbouncer -M simple", rnd)


def _pgbench_rows(results, scenarios):
    lines = []
    for sid, (title, _) in scenarios.items():
        if sid == "S6":
            continue
        rounds = [r for r in _rounds(results) if _get(results, sid, title, "pgsluice", r)]
        if not rounds:
            continue
        s = [_get(results, sid, title, "pgsluice", r) for r in rounds]
        b = [_bouncer(results, sid, title, r) for r in rounds]
        tps = [_ratio(x["tps"], y and y["ok"] and y["tps"]) for x, y in zip(s, b)]
        cpu = [_ratio(x.get("pooler_cpu_us_per_xact"), y and y.get("pooler_cpu_us_per_xact")) for x, y in zip(s, b)]
        lines.append(f"| {sid} {title} | TPS | {_num(_median([x['tps'] for x in s]), '{:.0f}')} | "
                     f"{_num(_median([y and y['tps'] for y in b]), '{:.0f}')} | {_spread(tps)} |")
        lines.append(f"| {sid} {title} | pooler CPU µs per transaction | {_num(_median([x.get('pooler_cpu_us_per_xact') for x in s]), '{:.2f}')} | "
                     f"{_num(_median([y and y.get('pooler_cpu_us_per_xact') for y in b]), '{:.2f}')} | {_spread(cpu)} |")
    return lines


def _latency_rows(results, scenarios):
    title = scenarios["S6"][0]
    rounds = [r for r in _rounds(results) if _get(results, "S6", title, "direct", r)]
    added = {"pgsluice": [], "pgbouncer": []}
    for rnd in rounds:
        d = _get(results, "S6", title, "direct", rnd)
        for t in added:
            x = _get(results, "S6", title, t, rnd)
            if x and d and x["latency_ms"] is not None and d["latency_ms"] is not None:
                added[t].append((x["latency_ms"] - d["latency_ms"]) * 1000)
    if not added["pgsluice"]:
        return []
    ratio = [_ratio(x, y) for x, y in zip(added["pgsluice"], added["pgbouncer"])]
    return [f"| S6 {title} | latency added over direct, µs per query | {_spread(added['pgsluice'])} | "
            f"{_spread(added['pgbouncer'])} | {_spread(ratio)} |"]


def _idle_rows(results):
    lines = []
    for title in sorted({r["title"] for r in results if r["scenario"] == "S5"}, key=lambda t: int(t.split()[0])):
        rounds = _rounds([r for r in results if r["title"] == title])
        s = [(_get(results, "S5", title, "pgsluice", r) or {}).get("rss_per_client_kib") for r in rounds]
        b = [(_get(results, "S5", title, "pgbouncer", r) or {}).get("rss_per_client_kib") for r in rounds]
        lines.append(f"| S5 {title} | RSS KiB per idle client | {_num(_median(s), '{:.2f}')} | {_num(_median(b), '{:.2f}')} | "
                     f"{_spread([_ratio(x, y) for x, y in zip(s, b)])} |")
    return lines


def _large_rows(results):
    lines = []
    titles = sorted({r["title"] for r in results if r["scenario"] == "S7"}, key=lambda t: int(t.split()[0]))
    for title in titles:
        rounds = _rounds([r for r in results if r["title"] == title])
        get = lambda t, k: [(_get(results, "S7", title, t, r) or {}).get(k) for r in rounds]
        s, b, d = get("pgsluice", "seconds"), get("pgbouncer", "seconds"), get("direct", "seconds")
        lines.append(f"| S7 {title} | seconds per Bind/Execute (direct {_num(_median(d), '{:.3f}')}) | {_num(_median(s), '{:.3f}')} | "
                     f"{_num(_median(b), '{:.3f}')} | {_spread([_ratio(x, y) for x, y in zip(s, b)])} |")
        gs, gb = _median(get("pgsluice", "rss_growth_kib")), _median(get("pgbouncer", "rss_growth_kib"))
        worst = max((x for x in get("pgsluice", "rss_growth_kib") if x is not None), default=None)
        lines.append(f"| S7 {title} | peak RSS growth KiB (the largest ÷ the 1 MiB Parse cap, for pgsluice) | "
                     f"{_num(gs, '{:.0f}')} ({_num(None if worst is None else worst / 1024, '{:.2f}')}×) | {_num(gb, '{:.0f}')} | – |")
    return lines


def _callgrind_rows(results):
    lines = []
    for sid, unit in (("S1C", "transaction"), ("S4C", "login")):
        rows = {r["target"]: r for r in results if r["scenario"] == sid}
        s, b = rows.get("pgsluice"), rows.get("pgbouncer")
        if not s:
            continue
        lines.append(f"| {sid} {s['title']} | instructions per {unit} (callgrind) | {s.get('ir_per_xact') or '–'} | "
                     f"{(b or {}).get('ir_per_xact') or '–'} | {_num(_ratio(s.get('ir_per_xact'), (b or {}).get('ir_per_xact')), '{:.2f}')} |")
    return lines


def _detail(results):
    lines = ["| round | scenario | target | TPS | avg latency ms | pooler CPU µs/xact | pooler RSS KiB | machine busy % | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["scenario"] in ("S5", "S7", "S1C", "S4C"):
            continue
        lines.append(f"| {r.get('round', 0)} | {r['scenario']} {r['title']} | {r['target']} | {r['tps']:.0f} | {r['latency_ms']} | "
                     f"{r.get('pooler_cpu_us_per_xact', '–')} | {r.get('pooler_rss_kib', '–')} | {r.get('machine_cpu_busy_pct', '–')} | "
                     f"{r['failed'] if r['error'] is None else 'ERROR ' + r['error']} |")
    return lines


def render(results, scenarios):
    n = len(_rounds(results))
    lines = [f"Ratios are pgsluice ÷ PgBouncer per round, as median [min–max] over {n} round(s); "
             "the values are medians.", "",
             "| scenario | measure | pgsluice | PgBouncer | pgsluice ÷ PgBouncer |", "|---|---|---|---|---|"]
    lines += _pgbench_rows(results, scenarios)
    if "S6" in {r["scenario"] for r in results}:
        lines += _latency_rows(results, scenarios)
    lines += _idle_rows(results) + _large_rows(results) + _callgrind_rows(results)
    plain = [r for r in results if r["scenario"] == "S1" and r["target"] == "pgsluice"]
    scraped = [r for r in results if r["scenario"] == "S1M"]
    if plain and scraped:
        ratio = [_ratio(m.get("pooler_cpu_us_per_xact"), p.get("pooler_cpu_us_per_xact"))
                 for m in scraped for p in plain if p.get("round") == m.get("round")]
        lines += ["", f"S1M: pgsluice CPU per transaction with /metrics scraped every second ÷ without: {_spread(ratio)}"]
    return "\n".join(lines + ["", "Every pgbench row:", ""] + _detail(results))
