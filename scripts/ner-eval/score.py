#!/usr/bin/env python3
"""Score personal-data predictions against the labelled evaluation set.

    python3 scripts/ner-eval/score.py [--set bench/ner-eval.jsonl] [--markdown] NAME=PATH [NAME=PATH ...]

Each PATH holds one JSON line per text: {"id": ..., "findings": [{"kind", "start", "end"}], and optionally
"level" and "micros"}. Offsets are bytes, as in the set. The systems are printed side by side (one column,
or a precision/recall pair, per system):

- per kind, precision and recall: a predicted span is a true positive when it overlaps a labelled span of
  the same kind in the same text; a labelled span is found when some predicted span of its kind overlaps
  it. An address is one labelled span, so any overlapping piece finds it. The row "any identifier" counts
  the identifier kinds as one (a tax ID found as a government ID counts there);
- level accuracy: the share of texts whose predicted level equals the labelled level. The predicted level
  is the line's `level` when it has one (Sluice reports its own), otherwise the level of the predicted
  kinds under Sluice's default rules (levels.py), which is how Presidio gets one;
- recall by group: the share of a group's texts predicted at the labelled level or above;
- on the hard negatives: the share predicted restricted or confidential, and the share predicted above
  their labelled level (public, or internal where a public figure is named);
- time per text (p50, p99) from `micros`, when given.

A text with no prediction line counts as no findings (and is reported).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from levels import IDENTIFIERS, RANK, level_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KIND_ORDER = [
    "person_name", "postal_address", "date_of_birth", "health", "special_category", "passport",
    "drivers_license", "tax_id", "bank_account", "routing_number", "government_id", "us_ssn", "iban",
    "payment_card", "email", "phone",
]
GROUP_ORDER = ["name_health", "name_dob", "name_address", "name_id", "name_special", "name_only", "contact",
               "address_only", "id_only"]
ANY_ID = "any identifier"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def overlaps(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def pct(num, den):
    return "-" if den == 0 else f"{100.0 * num / den:.1f}"


def percentile(values, p):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))]


def score(gold_rows, preds):
    """The figures for one system: a dict of counters."""
    kinds = {}  # kind -> [pred, pred_tp, gold, gold_found]
    level_ok = 0
    groups = {}  # group -> [texts, at_or_above]
    neg = [0, 0, 0]  # negatives, restricted or confidential, above labelled level
    restricted = [0, 0, 0]  # labelled restricted, predicted restricted, predicted restricted in all
    missing = 0
    micros = []
    model_lines = [0, 0]  # lines with a "model" field, of them true

    def counter(kind):
        return kinds.setdefault(kind, [0, 0, 0, 0])

    def count_spans(gold, pred, same):
        for p in pred:
            c = counter(same(p["kind"]))
            c[0] += 1
            c[1] += any(same(g["kind"]) == same(p["kind"]) and overlaps(p, g) for g in gold)
        for g in gold:
            c = counter(same(g["kind"]))
            c[2] += 1
            c[3] += any(same(g["kind"]) == same(p["kind"]) and overlaps(p, g) for p in pred)

    for row in gold_rows:
        pred_row = preds.get(row["id"])
        if pred_row is None:
            missing += 1
            pred_row = {"findings": []}
        gold, pred = row["spans"], pred_row.get("findings", [])
        count_spans(gold, pred, lambda k: k)
        count_spans([g for g in gold if g["kind"] in IDENTIFIERS], [p for p in pred if p["kind"] in IDENTIFIERS],
                    lambda k: ANY_ID)
        level = pred_row.get("level") or level_of(p["kind"] for p in pred)
        level_ok += level == row["level"]
        restricted[0] += row["level"] == "restricted"
        restricted[1] += row["level"] == "restricted" and level == "restricted"
        restricted[2] += level == "restricted"
        if row["group"] == "negative":
            neg[0] += 1
            neg[1] += level in ("restricted", "confidential")
            neg[2] += RANK[level] > RANK[row["level"]]
        else:
            g = groups.setdefault(row["group"], [0, 0])
            g[0] += 1
            g[1] += RANK[level] >= RANK[row["level"]]
        if "micros" in pred_row:
            micros.append(pred_row["micros"])
        if "model" in pred_row:
            model_lines[0] += 1
            model_lines[1] += bool(pred_row["model"])
    return {"kinds": kinds, "level_ok": level_ok, "texts": len(gold_rows), "groups": groups, "neg": neg,
            "restricted": restricted, "missing": missing, "micros": micros, "model_lines": model_lines}


def tables(names, results, gold_rows):
    """[(title, header, rows)] for the report."""
    out = []

    def row(label, figure):
        return [label] + [figure(r) for r in results]

    def ms(values, p):
        return f"{percentile(values, p) / 1e3:.2f}" if values else "-"

    summary = [
        row("level accuracy, all texts (%)", lambda r: pct(r["level_ok"], r["texts"])),
        row("restricted texts found restricted (%)", lambda r: pct(r["restricted"][1], r["restricted"][0])),
        row("texts predicted restricted that are (%)", lambda r: pct(r["restricted"][1], r["restricted"][2])),
        row("negatives predicted confidential or restricted (%)", lambda r: pct(r["neg"][1], r["neg"][0])),
        row("negatives predicted above their level (%)", lambda r: pct(r["neg"][2], r["neg"][0])),
    ]
    if any(r["micros"] for r in results):
        summary.append(row("time per text, p50 (ms)", lambda r: ms(r["micros"], 50)))
        summary.append(row("time per text, p99 (ms)", lambda r: ms(r["micros"], 99)))
    negatives = sum(r["group"] == "negative" for r in gold_rows)
    out.append((f"Summary ({len(gold_rows)} texts, {negatives} hard negatives)", ["figure"] + names, summary))

    all_kinds = [k for k in KIND_ORDER if any(k in r["kinds"] for r in results)]
    all_kinds += sorted({k for r in results for k in r["kinds"]} - set(KIND_ORDER) - {ANY_ID})
    all_kinds.append(ANY_ID)
    header = ["kind", "labelled"]
    for n in names:
        header += [f"{n} P", f"{n} R"]
    rows = []
    for k in all_kinds:
        gold_n = max((r["kinds"].get(k, [0, 0, 0, 0])[2] for r in results), default=0)
        row = [k, str(gold_n)]
        for r in results:
            pred, tp, gold, found = r["kinds"].get(k, [0, 0, 0, 0])
            row += [pct(tp, pred) + ("" if pred == 0 else f" ({pred})"), pct(found, gold)]
        rows.append(row)
    out.append(("Per kind: precision (predicted spans) and recall, %", header, rows))

    group_names = [g for g in GROUP_ORDER if any(g in r["groups"] for r in results)]
    group_names += sorted({g for r in results for g in r["groups"]} - set(GROUP_ORDER))
    rows = []
    for g in group_names:
        texts = max(r["groups"].get(g, [0, 0])[0] for r in results)
        labelled = sorted({row["level"] for row in gold_rows if row["group"] == g}, key=RANK.__getitem__)
        rows.append([g, str(texts), "/".join(labelled)]
                    + [pct(r["groups"].get(g, [0, 0])[1], r["groups"].get(g, [0, 0])[0]) for r in results])
    out.append(("Recall by group: texts predicted at the labelled level or above, %",
                ["group", "texts", "labelled level"] + names, rows))
    return out


def render(tabs, markdown):
    lines = []
    for title, header, rows in tabs:
        if markdown:
            lines.append(f"**{title}**\n")
            lines.append("| " + " | ".join(header) + " |")
            lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
            for row in rows:
                lines.append("| " + " | ".join(row) + " |")
        else:
            lines.append(title)
            widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
            fmt = lambda row: "  ".join(  # noqa: E731
                str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
            lines.append(fmt(header))
            lines.append("  ".join("-" * w for w in widths))
            lines.extend(fmt(row) for row in rows)
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default=str(ROOT / "bench" / "ner-eval.jsonl"))
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables (for docs/benchmarks.md)")
    ap.add_argument("systems", nargs="+", metavar="NAME=PATH")
    args = ap.parse_args()
    gold_rows = read_jsonl(args.set)
    names, results = [], []
    for spec in args.systems:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"expected NAME=PATH, got {spec!r}")
        preds = {p["id"]: p for p in read_jsonl(path)}
        r = score(gold_rows, preds)
        if r["missing"]:
            print(f"warning: {name}: {r['missing']} texts have no prediction line (scored as no findings)",
                  file=sys.stderr)
        with_field, model_on = r["model_lines"]
        if with_field and model_on < with_field:
            print(f"note: {name}: the personal-data model ran on {model_on} of {with_field} texts",
                  file=sys.stderr)
        names.append(name)
        results.append(r)
    print(render(tables(names, results, gold_rows), args.markdown))


if __name__ == "__main__":
    main()
