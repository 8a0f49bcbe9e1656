"""Validates every file in deploy/ offline; run by tests/deploy.rs.

- built-in Kubernetes kinds against the API schemas kubernetes-validate ships (strict: unknown
  fields are errors);
- Pooler, PodMonitor and PrometheusRule against their CRDs' schemas, vendored in schemas/ from
  CloudNativePG and the Prometheus Operator;
- kustomizations: every file they name exists; each overlay is rendered (its patches merged into
  the base, its generators made) and the result validated again, with its config file mounted
  where the Deployment's args look for it;
- PromQL in the rules and the dashboard parses (promql-parser), and every pgsluice_* metric it
  names is one pgsluice exposes (the names a live scrape found, from --metrics);
- the Grafana dashboard decodes with Grafana's schema models and has the structure Grafana needs;
- the Dockerfile parses and gives CloudNativePG's layout (/usr/bin/pgbouncer, uid 998, gid 996).

Prints one line per file checked; exits non-zero with every problem found.
"""

import argparse
import copy
import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import promql_parser
import yaml
from dockerfile_parse import DockerfileParser
from grafana_foundation_sdk.models.dashboard import Dashboard

K8S_VERSION = "1.33.0"
SCHEMAS = pathlib.Path(__file__).parent / "schemas"
problems = {}


def problem(where, what):
    problems.setdefault(f"{where}: {what}")


def crd_schemas():
    out = {}
    for f in SCHEMAS.glob("*.json"):
        d = json.loads(f.read_text())
        out[(f"{d['group']}/{d['version']}", d["kind"])] = d["schema"]
    return out


CRDS = crd_schemas()


def check_promql(where, expr, metric_names):
    # Grafana's own variables are not PromQL: put values of the right kind in their place.
    text = expr.replace("$__rate_interval", "5m")
    text = re.sub(r"\$\{?(\w+)\}?", "x", text)
    try:
        promql_parser.parse(text)
    except Exception as e:  # the parser raises its own error types
        problem(where, f"PromQL does not parse: {e}: {expr}")
        return
    if metric_names is not None:
        for name in set(re.findall(r"\bpgsluice_[a-z_]+\b", text)):
            if name not in metric_names:
                problem(where, f"{name} is not a metric pgsluice exposes")


def runbook_anchor(link):
    """The heading a `deploy/README.md#anchor` link names, or None."""
    page, _, anchor = link.partition("#")
    readme = pathlib.Path(__file__).parents[2] / page
    if not anchor or not readme.is_file():
        return None
    for line in readme.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            if re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") == anchor:
                return heading
    return None


def check_object(where, doc, metric_names):
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if (api, kind) in CRDS:
        validator = jsonschema.Draft7Validator(CRDS[(api, kind)])
        for e in validator.iter_errors(doc):
            problem(where, f"{kind}: {'/'.join(map(str, e.path))}: {e.message}")
        if kind == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    name = rule.get("alert") or rule.get("record")
                    check_promql(f"{where} {name}", rule["expr"], metric_names)
                    runbook = rule.get("annotations", {}).get("runbook", "")
                    if "alert" in rule and runbook_anchor(runbook) is None:
                        problem(where, f"{name}: runbook {runbook!r} is no heading of deploy/README.md")
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except Exception as e:
        problem(where, f"{kind}: {getattr(e, 'message', e)}")


def merge(base, patch):
    """Kustomize's strategic merge for what our patches use: maps merge, lists of named items
    merge by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
        isinstance(i, dict) and "name" in i for i in base + patch
    ):
        out = [copy.deepcopy(i) for i in base]
        for p in patch:
            for i, b in enumerate(out):
                if b["name"] == p["name"]:
                    out[i] = merge(b, p)
                    break
            else:
                out.append(p)
        return out
    return patch


def load_kustomization(directory):
    """The objects a kustomization yields, rendered as far as our files need."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    where = directory / "kustomization.yaml"
    objects = []
    for r in k.get("resources", []):
        path = directory / r
        if path.is_dir():
            objects += load_kustomization(path)
        elif path.exists():
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
        else:
            problem(where, f"resource {r} does not exist")
    for gen, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(gen, []):
            data = {}
            for f in g.get("files", []):
                path = directory / f
                if not path.exists():
                    problem(where, f"{gen} file {f} does not exist")
                    continue
                data[path.name] = path.read_text()
            field = "data" if kind == "ConfigMap" else "stringData"
            objects.append({"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}, field: data})
    for p in k.get("patches", []):
        path = directory / p["path"]
        if not path.exists():
            problem(where, f"patch {p['path']} does not exist")
            continue
        patch = yaml.safe_load(path.read_text())
        targets = [o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
        if not targets:
            problem(where, f"patch {p['path']} matches no {patch['kind']} {patch['metadata']['name']}")
        for t in targets:
            objects[objects.index(t)] = merge(t, patch)
    return objects


def check_overlay(directory, metric_names):
    objects = load_kustomization(directory)
    where = str(directory)
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
        check_object(f"{where} (rendered {o['kind']} {o['metadata']['name']})", o, metric_names)
    for d in by_kind.get("Deployment", {}).values():
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: volumes.get(m["name"]) for m in c.get("volumeMounts", [])}
            for arg in c.get("args", []):
                if not arg.startswith("/"):
                    continue
                mount = str(pathlib.Path(arg).parent)
                volume = mounts.get(mount)
                source = volume and (volume.get("configMap") or volume.get("secret"))
                name = source and (source.get("name") or source.get("secretName"))
                kind = "ConfigMap" if volume and "configMap" in volume else "Secret"
                obj = by_kind.get(kind, {}).get(name)
                keys = obj and (obj.get("data") or obj.get("stringData") or {})
                if not keys or pathlib.Path(arg).name not in keys:
                    problem(where, f"container {c['name']} reads {arg}, which no mounted ConfigMap or Secret holds")
        sa = pod.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            problem(where, f"service account {sa} is not defined")
    print(f"ok {where}: {len(objects)} objects rendered")


def check_dashboard(path, metric_names):
    d = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "schemaVersion", "templating"):
        if key not in d:
            problem(path, f"dashboard has no {key}")
    # Grafana's own schema models (grafana-foundation-sdk) decode it: a field of the wrong shape raises.
    try:
        model = Dashboard.from_json(d)
        if model.title != d.get("title") or len(model.panels or []) != len(d.get("panels", [])):
            problem(path, "Grafana's dashboard model does not read the title or every panel")
        for p in model.panels or []:
            if p.grid_pos is None or p.grid_pos.w <= 0 or p.grid_pos.h <= 0:
                problem(path, f"panel {p.title!r} has no size in Grafana's model")
    except Exception as e:
        problem(path, f"Grafana's dashboard model refuses it: {e!r}")
    ids = set()
    for p in d.get("panels", []):
        where = f"{path} panel {p.get('title')!r}"
        for key in ("id", "type", "title", "gridPos", "datasource", "targets"):
            if key not in p:
                problem(where, f"has no {key}")
        if p.get("id") in ids:
            problem(where, f"id {p.get('id')} is used twice")
        ids.add(p.get("id"))
        g = p.get("gridPos")
        g = g if isinstance(g, dict) else {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g.get("x", 0) + g.get("w", 0) > 24:
            problem(where, f"gridPos {g} is not within Grafana's 24 columns")
        for t in p.get("targets", []):
            check_promql(where, t["expr"], metric_names)
    print(f"ok {path}: {len(d.get('panels', []))} panels")


def check_dockerfile(path):
    df = DockerfileParser(path=str(path))
    stages = [i for i in df.structure if i["instruction"] == "FROM"]
    if len(stages) < 2:
        problem(path, "not a multi-stage build")
    text = path.read_text()
    final = text[text.rindex("\nFROM "):]
    for needle, why in (
        ("--uid 998", "user pgbouncer must be uid 998, as in CloudNativePG's image"),
        ("--gid 996", "group pgbouncer must be gid 996"),
        ("/usr/bin/pgbouncer", "CloudNativePG execs /usr/bin/pgbouncer"),
        ("postgresql-client", "psql is needed for kubectl exec ... psql"),
        ("USER 998:996", "the image must run as uid 998 / gid 996"),
    ):
        if needle not in final:
            problem(path, why)
    print(f"ok {path}: {len(stages)} stages")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("deploy")
    ap.add_argument("--metrics", help="file with the metric names pgsluice exposes, one a line")
    args = ap.parse_args()
    deploy = pathlib.Path(args.deploy)
    names = None
    if args.metrics:
        names = set(pathlib.Path(args.metrics).read_text().split())
    checked = 0
    for path in sorted(deploy.rglob("*")):
        if path.is_dir() or "node_modules" in path.parts:
            continue
        if path.name == "kustomization.yaml":
            if "overlays" in path.parts:
                check_overlay(path.parent, names)
            else:
                load_kustomization(path.parent)
            checked += 1
        elif path.suffix in (".yaml", ".yml"):
            for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
                if doc.get("kind") in (None, "Kustomization"):
                    continue
                if path.parent.name in ("toml", "ini") and doc.get("kind") == "Deployment":
                    continue  # an overlay's patch: validated once merged, above
                check_object(f"{path}#{i}", doc, names)
            print(f"ok {path}")
            checked += 1
        elif path.suffix == ".json":
            check_dashboard(path, names)
            checked += 1
        elif path.name == "Dockerfile":
            check_dockerfile(path)
            checked += 1
    if checked == 0:
        problem(deploy, "nothing to check")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
