"""Lints and renders charts/sluice with Helm's own engine and checks every manifest against Kubernetes' schemas.

Usage: render.py CHART_DIR < CASE.json, where the case is {"values": {...}, "name": "...", "namespace": "..."};
"values_file" (a path) instead of "values" reads them from a values file with Helm's parser.
Prints one JSON object on its last line:
  lint       what `helm lint` reports for the same values ({"errors": [...], "messages": [...]})
  error      the render's error message, or null when it rendered
  notes      the rendered NOTES.txt
  manifests  [{"template", "kind", "name", "doc", "schema", "files"}], where "schema" is "valid", "custom
             resource" (no Kubernetes schema: checked by the caller) or the validation error, and "files" holds
             a ConfigMap's *.yaml entries parsed (its "text" stays in doc)

The assertions live in tests/chart.rs; this script only reports.
"""

import json
import sys

import helm_python
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30"
# Kinds the Kubernetes schemas do not describe (their API groups come from CRDs).
CUSTOM_GROUPS = ("monitoring.coreos.com/",)


def schema_check(doc):
    if str(doc.get("apiVersion", "")).startswith(CUSTOM_GROUPS):
        return "custom resource"
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return f"invalid at {path or '(root)'}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e.message}"
    return "valid"


def main():
    chart_dir = sys.argv[1]
    case = json.load(sys.stdin)
    if "values_file" in case:
        with open(case["values_file"], encoding="utf-8") as f:
            values = helm_python.values_from_yaml(f.read())
    else:
        values = case.get("values", {})
    out = {"lint": None, "error": None, "notes": "", "manifests": []}

    out["lint"] = helm_python.lint(
        chart_dir, values, namespace=case["namespace"], kube_version="v" + KUBERNETES_VERSION + ".0"
    )

    with helm_python.Chart.load(chart_dir) as chart:
        try:
            rendered = chart.render(values, name=case["name"], namespace=case["namespace"], is_install=True)
        except helm_python.HelmError as e:
            out["error"] = str(e)
            rendered = {}

    for template in sorted(rendered):
        text = rendered[template]
        if template.endswith("NOTES.txt"):
            out["notes"] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            meta = doc.get("metadata") or {}
            files = {}
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith(".yaml"):
                        files[key] = yaml.safe_load(text)
            out["manifests"].append(
                {
                    "template": template,
                    "kind": doc.get("kind"),
                    "name": meta.get("name"),
                    "doc": doc,
                    "schema": schema_check(doc),
                    "files": files,
                }
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
