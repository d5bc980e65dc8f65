#!/usr/bin/env python3
"""Checks of the Helm chart, run by tests/chart.rs (and by hand).

Judges nobody here wrote do the work: Helm's own engine and linter (PyPI `helm-python-sdk`, which
carries Helm as a library), the Kubernetes OpenAPI schemas (`kubernetes-validate`), our generated
CRDs' openAPIV3Schema (`jsonschema`), Prometheus' `promtool` for the alert rules and the
dashboard's queries, and the `aad-pod-identity` binary's own command-line parser for every flag the
chart passes.

Usage: chart_check.py COMMAND [--binary PATH]
Commands: lint, validate, content, schema, flags, alerts, dashboard, metric-names, all.
Exit status: 0 ok, 1 a check failed, 3 a tool or Python package is missing.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART = HERE.parent
REPO = CHART.parent
VALUE_SETS = HERE / "values"
RELEASE = "pod-identity"
NAMESPACE = "identity-system"
# Kubernetes versions every rendered object is validated against: the oldest the chart supports
# (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
# Values the kubelet would put into fieldRef environment variables, for `$(VAR)` expansion.
FIELD_REF_SAMPLES = {
    "metadata.namespace": NAMESPACE,
    "metadata.name": "pod-identity-aad-pod-identity-mic-5d8f7c9b6-x2x7q",
    "spec.nodeName": "aks-nodepool1-12345678-vmss000000",
    "status.hostIP": "10.240.0.4",
    "status.podIP": "10.240.0.4",
}

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, reported plainly
    print(
        f"missing Python package ({e.name}): install the CI requirements with "
        f"`python3 -m venv .venv && .venv/bin/pip install -r ci/requirements.txt` "
        f"and put .venv/bin on PATH",
        file=sys.stderr,
    )
    sys.exit(3)


class Failures:
    """Collects failures so one run reports all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def check(self, cond: bool, where: str, what: str) -> None:
        if not cond:
            self.add(where, what)


# ---------------------------------------------------------------------------------------------
# Rendering


# The Go original's own default values file (v1.8.17's chart), kept as a test fixture: it must
# install unchanged.
ORIGINAL_DEFAULTS = HERE.parent.parent / "tests" / "fixtures" / "original" / "values.yaml"


def value_sets() -> dict[str, dict]:
    sets = {}
    for path in sorted(VALUE_SETS.glob("*.yaml")):
        sets[path.stem] = yaml.safe_load(path.read_text()) or {}
    sets["original-defaults"] = yaml.safe_load(ORIGINAL_DEFAULTS.read_text()) or {}
    if not sets:
        raise SystemExit(f"no value sets in {VALUE_SETS}")
    return sets


def render(values: dict) -> tuple[list[dict], str]:
    """Renders the chart like `helm install` would; returns the objects (CRDs first) and NOTES."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        crds = chart.crds
    objects = []
    for crd in crds:
        objects.extend(d for d in yaml.safe_load_all(crd["data"]) if d)
    notes = ""
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", None)
                doc["_template"] = name
                objects.append(doc)
    return objects, notes


def strip(obj: dict) -> dict:
    o = {k: v for k, v in obj.items() if k != "_template"}
    if o.get("metadata", {}).get("namespace", "") is None:
        o["metadata"] = {k: v for k, v in o["metadata"].items() if k != "namespace"}
    return o


def find(objects: list[dict], kind: str, component: str | None = None) -> list[dict]:
    out = [o for o in objects if o.get("kind") == kind]
    if component:
        out = [
            o
            for o in out
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
    return out


def where(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj['metadata'].get('name')} ({obj.get('_template', 'crds')})"


# ---------------------------------------------------------------------------------------------
# lint


def cmd_lint(f: Failures) -> None:
    """`helm lint --strict` (warnings fail) for every value set and each Kubernetes version."""
    for name, values in value_sets().items():
        for version in KUBE_VERSIONS:
            report = helm.lint(str(CHART), values, namespace=NAMESPACE, strict=True, kube_version=f"v{version}")
            for err in report.get("errors", []):
                f.add(f"helm lint [{name}] (Kubernetes {version})", err)
            for msg in report.get("messages", []):
                line = f"[{msg['severity']}] {msg['path']}: {msg['error']}"
                if msg["severity"] >= 2:
                    f.add(f"helm lint [{name}] (Kubernetes {version})", line)
                else:
                    print(f"helm lint [{name}] (Kubernetes {version}) info: {line}")


# ---------------------------------------------------------------------------------------------
# validate: Kubernetes schemas, CRD schemas, monitoring kinds


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator built from the CRD's openAPIV3Schema.

    Kubernetes prunes unknown fields silently; the chart must not rely on that, so objects with
    declared properties get additionalProperties: false unless the CRD preserves unknown fields.
    """

    def to_json_schema(s):
        if isinstance(s, list):
            return [to_json_schema(x) for x in s]
        if not isinstance(s, dict):
            return s
        out = {k: to_json_schema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
        if s.get("nullable"):
            out.pop("nullable", None)
            t = out.get("type")
            if isinstance(t, str):
                out["type"] = [t, "null"]
        if (
            "properties" in s
            and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out

    validators = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def check_monitoring_shape(obj: dict, objects: list[dict], f: Failures) -> None:
    """prometheus-operator kinds: kubernetes-validate has no schema for them; check the fields
    the operator needs and that they point at real pods, Services and ports."""
    w = where(obj)
    f.check(obj.get("apiVersion") == "monitoring.coreos.com/v1", w, "apiVersion must be monitoring.coreos.com/v1")
    spec = obj.get("spec") or {}
    kind = obj["kind"]
    if kind == "PrometheusRule":
        groups = spec.get("groups")
        f.check(isinstance(groups, list) and groups, w, "spec.groups must be a non-empty list")
        for g in groups or []:
            f.check(bool(g.get("name")), w, "every group needs a name")
            for r in g.get("rules", []):
                f.check(bool(r.get("alert") or r.get("record")) and bool(r.get("expr")), w, f"rule without alert/record or expr: {r}")
        return  # the rules themselves are judged by promtool (command `alerts`)
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    f.check(bool(sel), w, "spec.selector.matchLabels must be set")
    if kind == "PodMonitor":
        endpoints = spec.get("podMetricsEndpoints") or []
        pods = [
            o["spec"]["template"]
            for o in objects
            if o.get("kind") in ("Deployment", "DaemonSet")
            and sel.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        f.check(len(pods) == 1, w, f"selector must match exactly one workload, matched {len(pods)}")
        ports = {p.get("name") for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
    elif kind == "ServiceMonitor":
        endpoints = spec.get("endpoints") or []
        services = [
            o
            for o in objects
            if o.get("kind") == "Service"
            and sel.items() <= o["metadata"].get("labels", {}).items()
        ]
        f.check(len(services) == 1, w, f"selector must match exactly one Service, matched {len(services)}")
        ports = {p.get("name") for s in services for p in s["spec"]["ports"]}
    else:
        f.add(w, f"unexpected monitoring kind {kind}")
        return
    f.check(bool(endpoints), w, "at least one endpoint")
    for e in endpoints:
        f.check(e.get("port") in ports, w, f"endpoint port {e.get('port')!r} is not among {sorted(ports)}")
        f.check(e.get("path") == "/metrics", w, "endpoint path must be /metrics")


def cmd_validate(f: Failures) -> None:
    crds = crd_validators()
    for name, values in value_sets().items():
        objects, _ = render(values)
        counts = {"kubernetes": 0, "crd": 0, "monitoring": 0}
        for obj in objects:
            w = f"[{name}] {where(obj)}"
            api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
            if (api, kind) in crds:
                errors = sorted(crds[(api, kind)].iter_errors(strip(obj)), key=str)
                for e in errors:
                    f.add(w, f"CRD schema: {'/'.join(map(str, e.absolute_path))}: {e.message}")
                counts["crd"] += 1
            elif api.startswith("monitoring.coreos.com/"):
                check_monitoring_shape(obj, objects, f)
                counts["monitoring"] += 1
            else:
                for version in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(strip(obj), version, strict=True)
                    except kubernetes_validate.utils.ValidationError as e:
                        f.add(w, f"Kubernetes {version} schema: {'/'.join(map(str, e.path))}: {e.message}")
                    except kubernetes_validate.utils.SchemaNotFoundError as e:
                        f.add(w, f"no Kubernetes {version} schema for {api} {kind}: {e}")
                counts["kubernetes"] += 1
        print(
            f"validate [{name}]: {counts['kubernetes']} objects against Kubernetes {' and '.join(KUBE_VERSIONS)} (strict), "
            f"{counts['crd']} against our CRDs, {counts['monitoring']} prometheus-operator objects by shape "
            f"(kubernetes-validate ships no schema for monitoring.coreos.com; their rules go through promtool)"
        )


# ---------------------------------------------------------------------------------------------
# content: what the issue asks of the objects


def rules_of(objects: list[dict], kind: str, component: str) -> list[dict]:
    out = []
    for role in find(objects, kind, component):
        out.extend(role.get("rules", []))
    return out


def grants(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and verb in r.get("verbs", [])
        for r in rules
    )


def only_container(w: dict) -> dict:
    return w["spec"]["template"]["spec"]["containers"][0]


def cmd_content(f: Failures) -> None:
    sets = value_sets()
    for name, values in sets.items():
        objects, notes = render(values)
        merged = merged_values(values)
        managed = merged["operationMode"] == "managed"
        tag = f"[{name}]"

        # Nothing grants everything.
        for o in objects:
            for r in o.get("rules", []) if o.get("kind") in ("ClusterRole", "Role") else []:
                for key in ("verbs", "resources", "apiGroups"):
                    f.check("*" not in r.get(key, []), f"{tag} {where(o)}", f"wildcard in {key}")

        nmis = find(objects, "DaemonSet", "nmi")
        f.check(len(nmis) == 1, tag, f"one NMI DaemonSet, found {len(nmis)}")
        for ds in nmis:
            w = f"{tag} {where(ds)}"
            pod = ds["spec"]["template"]["spec"]
            c = only_container(ds)
            f.check(pod.get("hostNetwork") is True, w, "hostNetwork")
            f.check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", w, "dnsPolicy ClusterFirstWithHostNet")
            caps = c.get("securityContext", {}).get("capabilities", {})
            f.check(sorted(caps.get("add", [])) == ["NET_ADMIN", "NET_RAW"], w, f"capabilities added must be NET_ADMIN and NET_RAW only, are {caps.get('add')}")
            f.check(caps.get("drop") == ["ALL"], w, "all other capabilities dropped")
            f.check(c.get("securityContext", {}).get("privileged") in (None, False), w, "not privileged")
            f.check(c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, w, "no privilege escalation")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            lock = vols.get(mounts.get("/run/xtables.lock", ""), {})
            f.check(lock.get("hostPath", {}).get("path") == merged["nmi"]["xtablesLockPath"], w, "xtables lock hostPath mounted at /run/xtables.lock")
            env = {e["name"]: e for e in c.get("env", [])}
            f.check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName", w, "NODE_NAME from spec.nodeName")
            f.check("--node=$(NODE_NAME)" in c["args"], w, "--node=$(NODE_NAME) passed")
            f.check(env.get("HOST_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP", w, "HOST_IP from status.hostIP")
            f.check("--nmi-listen-address=$(HOST_IP)" in c["args"], w, "NMI listens on (and the redirect targets) the node's address, as the original")
            f.check(ds["spec"]["updateStrategy"]["type"] == "RollingUpdate", w, "RollingUpdate")
            f.check(bool(pod.get("tolerations")), w, "tolerations set")
            f.check(f"--operation-mode={merged['operationMode']}" in c["args"], w, "operation mode passed")
            check_probes(c, merged["nmi"]["probePort"] or 8080, w, f)
            f.check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", w, "NMI readiness on /readyz")
            # The node gate: flag, toleration of its taint (whatever nmi.tolerations say).
            gate = str(merged["nmi"]["nodeGate"]["enabled"]).lower() == "true"
            key = merged["nmi"]["nodeGate"]["taintKey"]
            f.check(("--node-gate=true" in c["args"]) == gate, w, f"--node-gate passed exactly when nmi.nodeGate.enabled ({gate})")
            if gate:
                f.check(f"--node-gate-taint={key}" in c["args"], w, "--node-gate-taint passed")
                tolerated = any(
                    t.get("operator") == "Exists" and t.get("key") in (None, "", key) and t.get("effect") in (None, "", "NoSchedule")
                    for t in pod.get("tolerations", [])
                )
                f.check(tolerated, w, f"NMI tolerates the gate's taint {key}")
            # The kubenet check reads the kubelet's file from the node, read-only.
            kubelet = merged["nmi"]["kubeletConfig"]
            if kubelet:
                f.check(f"--kubelet-config={kubelet}" in c["args"], w, "--kubelet-config passed")
                vol = vols.get(mounts.get(kubelet, ""), {})
                f.check(vol.get("hostPath", {}).get("path") == kubelet, w, f"{kubelet} mounted from the node")
                f.check(any(m["mountPath"] == kubelet and m.get("readOnly") for m in c.get("volumeMounts", [])), w, "kubelet file mounted read-only")
            fed = str(merged["nmi"]["federation"]["enabled"]).lower() == "true"
            f.check(("--enable-federation=true" in c["args"]) == fed, w, f"--enable-federation passed exactly when nmi.federation.enabled ({fed})")
            if fed and merged["nmi"]["federation"]["tenantID"]:
                f.check(f"--federation-tenant-id={merged['nmi']['federation']['tenantID']}" in c["args"], w, "--federation-tenant-id passed")
            allow = str(merged["nmi"]["allowNetworkPluginKubenet"]).lower()
            f.check(f"--allow-network-plugin-kubenet={allow}" in c["args"], w, "--allow-network-plugin-kubenet passed")
            f.check(bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")), w, "resource requests and limits")

        mics = find(objects, "Deployment", "mic")
        f.check(len(mics) == (0 if managed else 1), tag, f"MIC Deployment count {len(mics)} in {merged['operationMode']} mode")
        for d in mics:
            w = f"{tag} {where(d)}"
            pod = d["spec"]["template"]["spec"]
            c = only_container(d)
            f.check(d["spec"]["replicas"] == merged["mic"]["replicas"], w, "replicas from mic.replicas")
            anti = pod.get("affinity", {}).get("podAntiAffinity") or merged["mic"]["affinity"]
            f.check(bool(anti), w, "pod anti-affinity (or the user's own affinity)")
            env = {e["name"]: e for e in c.get("env", [])}
            f.check(env.get("MIC_POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace", w, "MIC_POD_NAMESPACE from the downward API")
            # MIC finds this release's NMI pods (for its report of nodes without one).
            sel = next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--nmi-selector=")), "")
            nmi_labels = nmis[0]["spec"]["template"]["metadata"]["labels"] if nmis else {}
            pairs = dict(p.split("=", 1) for p in sel.split(",") if "=" in p)
            f.check(bool(pairs) and all(nmi_labels.get(k) == v for k, v in pairs.items()), w, f"--nmi-selector {sel!r} selects the NMI pods")
            check_probes(c, merged["mic"]["probePort"] or 8080, w, f)
            f.check(bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")), w, "resource requests and limits")
            caps = c.get("securityContext", {}).get("capabilities", {})
            f.check(caps.get("drop") == ["ALL"] and not caps.get("add"), w, "MIC has no capabilities")
            if merged["adminsecret"]:
                f.check(not any(a.startswith("--cloudconfig") for a in c["args"]), w, "no --cloudconfig with adminsecret")
                f.check({"TENANT_ID", "CLIENT_ID", "CLIENT_SECRET", "SUBSCRIPTION_ID", "RESOURCE_GROUP", "VM_TYPE", "USE_MSI", "USER_ASSIGNED_MSI_CLIENT_ID"} <= env.keys(), w, "cloud config from the Secret's environment")
                f.check(not pod.get("volumes"), w, "no hostPath when MIC has its own credentials")
            else:
                f.check(f"--cloudconfig={merged['mic']['cloudConfig']}" in c["args"], w, "--cloudconfig passed")
                vol = {v["name"]: v for v in pod.get("volumes", [])}
                f.check(any(v.get("hostPath", {}).get("path") == merged["mic"]["cloudConfig"] for v in vol.values()), w, "azure.json hostPath")
            sel = d["spec"]["selector"]["matchLabels"]
            pdbs = find(objects, "PodDisruptionBudget", "mic")
            f.check(len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"] == sel, w, "a PodDisruptionBudget selecting MIC's pods")

        # RBAC
        if merged["rbac"]["enabled"]:
            nmi_rules = rules_of(objects, "ClusterRole", "nmi")
            f.check(grants(nmi_rules, "", "pods", "list") and grants(nmi_rules, "", "pods", "watch"), tag, "NMI lists and watches pods")
            for res in ("azureidentities", "azureidentitybindings", "azureassignedidentities", "azurepodidentityexceptions"):
                f.check(grants(nmi_rules, "aadpodidentity.k8s.io", res, "watch"), tag, f"NMI watches {res}")
                f.check(not grants(nmi_rules, "aadpodidentity.k8s.io", res, "create"), tag, f"NMI does not write {res}")
            sp_in_values = any(str((i or {}).get("type", 0)) != "0" for i in (merged.get("azureIdentities") or {}).values())
            want_secrets = merged["rbac"]["allowAccessToSecrets"] or sp_in_values
            f.check(grants(nmi_rules, "", "secrets", "get") == bool(want_secrets), tag, f"NMI reads Secrets only when needed (want {want_secrets})")
            f.check(not grants(nmi_rules, "", "secrets", "list"), tag, "NMI never lists Secrets")
            fed = str(merged["nmi"]["federation"]["enabled"]).lower() == "true"
            f.check(grants(nmi_rules, "", "serviceaccounts/token", "create") == fed, tag, f"NMI asks for service-account tokens exactly when federation is on ({fed})")
            f.check(grants(nmi_rules, "", "serviceaccounts", "watch") == fed, tag, f"NMI watches service accounts exactly when federation is on ({fed})")
            f.check(not grants(nmi_rules, "", "serviceaccounts", "update") and not grants(nmi_rules, "", "serviceaccounts", "create"), tag, "NMI never writes service accounts")
            gate = str(merged["nmi"]["nodeGate"]["enabled"]).lower() == "true"
            f.check(grants(nmi_rules, "", "nodes", "patch") == gate, tag, f"NMI patches nodes exactly when the node gate is on ({gate})")
            if gate:
                f.check(grants(nmi_rules, "", "nodes", "watch") and grants(nmi_rules, "", "nodes", "get"), tag, "NMI reads and watches nodes for the gate")
                f.check(not grants(nmi_rules, "", "nodes", "update") and not grants(nmi_rules, "", "nodes", "delete"), tag, "NMI only patches nodes")
            if not managed:
                mic_rules = rules_of(objects, "ClusterRole", "mic")
                for res in ("pods", "nodes"):
                    f.check(grants(mic_rules, "", res, "watch"), tag, f"MIC watches {res}")
                for verb in ("create", "update", "patch", "delete"):
                    f.check(grants(mic_rules, "aadpodidentity.k8s.io", "azureassignedidentities", verb), tag, f"MIC may {verb} azureassignedidentities")
                f.check(grants(mic_rules, "aadpodidentity.k8s.io", "azureassignedidentities/status", "update"), tag, "MIC updates assignment status")
                f.check(not grants(mic_rules, "aadpodidentity.k8s.io", "azureidentities", "update"), tag, "MIC does not write identities")
                f.check(grants(mic_rules, "", "events", "create"), tag, "MIC records Events")
                f.check(not any("secrets" in r.get("resources", []) for r in mic_rules), tag, "MIC never reads Secrets")
                le_ns = merged["mic"]["leaderElection"]["namespace"] or NAMESPACE
                roles = [r for r in find(objects, "Role", "mic") if r["metadata"]["namespace"] == le_ns]
                lease_rules = [r for role in roles for r in role["rules"]]
                f.check(grants(lease_rules, "coordination.k8s.io", "leases", "create") and grants(lease_rules, "coordination.k8s.io", "leases", "update"), tag, f"MIC's leader-election Lease RBAC in {le_ns}")
                f.check(not grants(mic_rules, "coordination.k8s.io", "leases", "update"), tag, "Lease access is namespaced, not cluster-wide")
                f.check(grants(lease_rules, "", "endpoints", "create") and grants(lease_rules, "", "endpoints", "update"), tag, f"MIC's Endpoints lock (the original's) RBAC in {le_ns}")
                f.check(not grants(mic_rules, "", "endpoints", "update"), tag, "Endpoints access is namespaced, not cluster-wide")
                # The Role's binding names MIC's ServiceAccount.
                sa = find(objects, "ServiceAccount", "mic")[0]["metadata"]["name"]
                rbs = [b for b in find(objects, "RoleBinding", "mic") if b["metadata"]["namespace"] == le_ns]
                f.check(any(s["name"] == sa for b in rbs for s in b["subjects"]), tag, "RoleBinding for the Lease names MIC's ServiceAccount")

        else:
            rbac_objs = [o for o in objects if o.get("kind") in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
            f.check(not rbac_objs, tag, f"rbac.enabled=false renders no RBAC objects, found {[where(o) for o in rbac_objs]}")

        # Workloads use their ServiceAccounts.
        for kind, comp in (("Deployment", "mic"), ("DaemonSet", "nmi")):
            for wl in find(objects, kind, comp):
                sas = [s["metadata"]["name"] for s in find(objects, "ServiceAccount", comp)]
                f.check(wl["spec"]["template"]["spec"]["serviceAccountName"] in sas, f"{tag} {where(wl)}", "uses the chart's ServiceAccount")

        # MIC exception and identities from values.
        all_exc = find(objects, "AzurePodIdentityException")
        installed = str(merged["installMICException"]).lower() == "true"
        exc = [e for e in all_exc if e["metadata"]["name"] != "aks-addon-exception"]
        addon = [e for e in all_exc if e["metadata"]["name"] == "aks-addon-exception"]
        want_exc = (not managed) and installed
        f.check(len(exc) == int(want_exc), tag, f"AzurePodIdentityException for MIC: want {want_exc}, found {len(exc)}")
        f.check(len(addon) == int(installed), tag, "the AKS add-on exception, as the original's chart installs it")
        for e in addon:
            f.check(e["metadata"]["namespace"] == "kube-system", tag, "the add-on exception lives in kube-system")
            f.check(e["spec"]["podLabels"] == {"kubernetes.azure.com/managedby": "aks"}, tag, "the add-on exception's label")
        for e in exc:
            mic_labels = mics[0]["spec"]["template"]["metadata"]["labels"]
            f.check(e["spec"]["podLabels"].items() <= mic_labels.items(), tag, "the exception matches MIC's pods")
            f.check(e["metadata"]["namespace"] == NAMESPACE, tag, "the exception lives in MIC's namespace")
        ids = merged.get("azureIdentities") or {}
        f.check(len(find(objects, "AzureIdentity")) == len(ids), tag, "one AzureIdentity per azureIdentities entry")
        for key, spec in ids.items():
            want = (spec or {}).get("name") or key
            got = [i for i in find(objects, "AzureIdentity") if i["metadata"]["name"] == want]
            f.check(len(got) == 1, tag, f"azureIdentities.{key} is AzureIdentity {want} (name overrides the key)")
            fed = (spec or {}).get("federated") is True
            for i in got:
                has = (i["metadata"].get("annotations") or {}).get("aadpodidentity.k8s.io/federated") == "true"
                f.check(has == fed, tag, f"AzureIdentity {want} annotated federated exactly when asked ({fed})")
            ref = (spec or {}).get("clientPassword")
            if got and ref:
                want_ref = json.loads(ref) if isinstance(ref, str) else ref
                have = got[0]["spec"].get("clientPassword", {})
                f.check(have.get("name") == want_ref["name"], tag, f"clientPassword of {want} names Secret {want_ref['name']} (string or map form)")
        users = merged["rbac"]["enabled"] and str(merged["rbac"].get("createUserFacingClusterRoles")).lower() == "true"
        view = [r for r in find(objects, "ClusterRole") if r["metadata"]["name"].endswith("-view")]
        edit = [r for r in find(objects, "ClusterRole") if r["metadata"]["name"].endswith("-edit")]
        f.check(len(view) == len(edit) == int(users), tag, f"user-facing ClusterRoles exactly when rbac.createUserFacingClusterRoles (want {users})")
        for r in view:
            f.check(r["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view") == "true", tag, "the view role aggregates to view")
            f.check(not grants(r["rules"], "aadpodidentity.k8s.io", "azureidentities", "create"), tag, "the view role only reads")
        for r in edit:
            f.check(r["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-edit") == "true", tag, "the edit role aggregates to edit")
            f.check(grants(r["rules"], "aadpodidentity.k8s.io", "azureidentitybindings", "create"), tag, "the edit role writes bindings")
            f.check(not grants(r["rules"], "aadpodidentity.k8s.io", "azureassignedidentities", "create"), tag, "users never write AzureAssignedIdentities")
        psp = str(merged["rbac"].get("pspEnabled")).lower() == "true"
        f.check(not find(objects, "PodSecurityPolicy"), tag, "no PodSecurityPolicy (removed in Kubernetes 1.25)")
        f.check(("rbac.pspEnabled" in notes) == psp, tag, "NOTES say rbac.pspEnabled creates nothing, when it is set")
        ua = merged.get("customUserAgent") or ""
        for wl in mics + nmis:
            args = only_container(wl)["args"]
            f.check((f"--custom-user-agent={ua}" in args) == bool(ua), f"{tag} {where(wl)}", "--custom-user-agent passed when customUserAgent is set")
        custom = str((merged["mic"].get("customCloud") or {}).get("enabled")).lower() == "true"
        for d in mics:
            c = only_container(d)
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            path = merged["mic"]["customCloud"]["configPath"]
            mounted = any(m["mountPath"] == path for m in c.get("volumeMounts", []))
            f.check((env.get("AZURE_ENVIRONMENT_FILEPATH") == path and mounted) == custom, f"{tag} {where(d)}", f"mic.customCloud mounts {path} and names it in AZURE_ENVIRONMENT_FILEPATH (want {custom})")
        for b in find(objects, "AzureIdentityBinding"):
            names = [i["metadata"]["name"] for i in find(objects, "AzureIdentity") if i["metadata"]["namespace"] == b["metadata"]["namespace"]]
            f.check(b["spec"]["azureIdentity"] in names, tag, f"binding {b['metadata']['name']} names an identity in its namespace")

        f.check("kubectl" in notes and "aadpodidbinding" in notes, tag, "NOTES tell the user what to do next")
        retired = [
            f"{comp}.{k}"
            for comp in ("mic", "nmi")
            for k in ("image", "tag", "logVerbosity", "enableScaleFeatures")
            + (("allowNetworkPluginKubenet", "kubeletConfig") if comp == "mic" else ())
            if str(values.get(comp, {}).get(k, "")) != ""
        ]
        for key in retired:
            f.check(key in notes and "Ignored values of the original chart" in notes, tag, f"NOTES name the ignored key {key}")
        if not retired:
            f.check("Ignored values" not in notes, tag, "NOTES mention ignored keys only when some are set")

        # forceNamespaced reaches both components, in boolean or the original's string form.
        want_ns = str(merged["forceNamespaced"]).lower()
        for wl in mics + nmis:
            f.check(f"--forceNamespaced={want_ns}" in only_container(wl)["args"], f"{tag} {where(wl)}", f"--forceNamespaced={want_ns}")
        print(f"content [{name}]: checked {len(objects)} objects")


def check_probes(c: dict, port, w: str, f: Failures) -> None:
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        f.check(get.get("path") in ("/healthz", "/readyz"), w, f"{probe} on /healthz or /readyz")
        f.check(ports.get(get.get("port")) == int(port), w, f"{probe} on the http-probe port {port}")
    f.check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", w, "liveness on /healthz")
    f.check(f"--http-probe-port={port}" in c["args"] or int(port) == 8080, w, "the binary listens on the probed port")


def merged_values(values: dict) -> dict:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


# ---------------------------------------------------------------------------------------------
# schema: values.schema.json and the templates' own checks refuse bad values


BAD_VALUES = [
    ({"mic": {"createDeleteBatch": 0}}, "/mic/createDeleteBatch"),
    ({"mic": {"unassignGracePeriod": "60"}}, "/mic/unassignGracePeriod"),
    ({"mic": {"armWritesPerMinute": -1}}, "/mic/armWritesPerMinute"),
    ({"mic": {"leaderElection": {"duration": "15"}}}, "/mic/leaderElection/duration"),
    ({"mic": {"probePort": 0}}, "/mic/probePort"),
    ({"nmi": {"metadataHeaderRequired": "yes"}}, "/nmi/metadataHeaderRequired"),
    ({"nmi": {"nodeGate": {"taintKey": "not a key"}}}, "/nmi/nodeGate/taintKey"),
    ({"nmi": {"nodeGate": {"enabled": "yes"}}}, "/nmi/nodeGate/enabled"),
    ({"nmi": {"federation": {"tenantID": "a/b"}}}, "/nmi/federation/tenantID"),
    ({"nmi": {"federation": {"enabled": "on"}}}, "/nmi/federation/enabled"),
    ({"nmi": {"allowNetworkPluginKubenet": "maybe"}}, "/nmi/allowNetworkPluginKubenet"),
    ({"nmi": {"ipTableUpdateTimeIntervalInSeconds": "-1"}}, "/nmi/ipTableUpdateTimeIntervalInSeconds"),
    ({"forceNamespaced": "maybe"}, "/forceNamespaced"),
    ({"operationMode": "legacy"}, "/operationMode"),
    ({"mic": {"loggingFormat": "xml"}}, "/mic/loggingFormat"),
    ({"mic": {"replicsa": 2}}, "/mic"),
    ({"azureIdentities": {"x": {"clientID": "c", "resourceID": "/not/a/resource/id"}}}, "/azureIdentities/x"),
    ({"azureIdentities": {"x": {"type": 1, "clientID": "c"}}}, "/azureIdentities/x"),
    ({"azureIdentities": {"x": {"type": 3, "clientID": "c"}}}, "/azureIdentities/x/type"),
]
BAD_RENDERS = [
    ({"operationMode": "managed", "forceNamespaced": False}, "requires forceNamespaced"),
    ({"monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}}, "not both"),
    ({"adminsecret": {"cloud": "AzurePublicCloud"}}, "adminsecret.subscriptionID is required"),
    ({"azureIdentities": {"x": {"type": 1, "clientID": "c", "tenantID": "t", "clientPassword": "{}", "binding": {"selector": "s"}}}}, "must name the Secret"),
]


def cmd_schema(f: Failures) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        for name, values in value_sets().items():
            try:
                chart.validate_schema(values)
            except helm.HelmError as e:
                f.add(f"schema [{name}]", f"a shipped value set is refused: {e}")
        for values, key in BAD_VALUES:
            try:
                chart.validate_schema(values)
                f.add("schema", f"accepted bad values {values}")
            except helm.HelmValuesError as e:
                f.check(f"'{key}" in str(e), "schema", f"refusal of {values} should name {key}: {e}")
        for values, text in BAD_RENDERS:
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                f.add("render", f"rendered bad values {values}")
            except helm.HelmError as e:
                f.check(text in str(e), "render", f"refusal of {values} should say {text!r}: {e}")
    print(f"schema: {len(BAD_VALUES)} bad value sets refused by values.schema.json, {len(BAD_RENDERS)} by the templates")


# ---------------------------------------------------------------------------------------------
# flags: every argument the chart passes is one the binary accepts


def help_of(binary: str, sub: str) -> tuple[str, dict[str, str]]:
    """The subcommand's --help text and its map of environment variable -> flag."""
    out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, env={}, check=True).stdout
    env_to_flag = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^\s+(?:-\w, )?(--[A-Za-z][\w-]*)", line)
        if m:
            current = m.group(1)
        m = re.search(r"\[env: ([A-Z_][A-Z0-9_]*)=", line)
        if m and current:
            env_to_flag[m.group(1)] = current
    return out, env_to_flag


def container_env(container: dict, objects: list[dict]) -> dict[str, str]:
    """The environment the kubelet would give the container, with sample values for references."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in FIELD_REF_SAMPLES:
                raise SystemExit(f"no sample value for fieldRef {path}; add one to FIELD_REF_SAMPLES")
            env[e["name"]] = FIELD_REF_SAMPLES[path]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            secrets = [s for s in objects if s.get("kind") == "Secret" and s["metadata"]["name"] == ref["name"]]
            if secrets:
                env[e["name"]] = base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
            else:
                env[e["name"]] = "sample"
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def cmd_flags(f: Failures, binary: str | None) -> None:
    if not binary:
        raise SystemExit("flags: --binary PATH (the aad-pod-identity binary) is required")
    helps = {sub: help_of(binary, sub) for sub in ("mic", "nmi")}
    # Every optional value of mic.* and nmi.* (empty by default) is set by the every-flag value set,
    # so each flag the chart can pass is passed at least once below.
    defaults = merged_values({})
    every = merged_values(value_sets()["every-flag"])

    def unset_keys(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from unset_keys(v, f"{prefix}{k}.")
            elif v == "" or v == []:
                yield f"{prefix}{k}"

    def get(d: dict, dotted: str):
        for part in dotted.split("."):
            d = d.get(part, "") if isinstance(d, dict) else ""
        return d

    for comp in ("mic", "nmi"):
        for key in unset_keys(defaults[comp], f"{comp}."):
            if key.endswith(("priorityClassName", "Override")):
                continue
            f.check(get(every, key) not in ("", [], None), "values/every-flag.yaml", f"{key} must be set so its flag is checked")
    seen: dict[str, set[str]] = {"mic": set(), "nmi": set()}
    for name, values in value_sets().items():
        objects, _ = render(values)
        for kind, sub in (("Deployment", "mic"), ("DaemonSet", "nmi")):
            for wl in find(objects, kind, sub):
                c = only_container(wl)
                w = f"[{name}] {where(wl)}"
                f.check(c["command"] == merged_values(values)["image"]["command"], w, "command is image.command")
                args = c["args"]
                if not args or args[0] != sub:
                    f.add(w, f"args must start with the subcommand {sub!r}: {args}")
                    continue
                env = container_env(c, objects)
                expanded = [expand(a, env) for a in args[1:]]
                for a in expanded:
                    if "$(" in a:
                        f.add(w, f"{a!r} references a variable the container does not define")
                help_text, env_to_flag = helps[sub]
                names = {a.split("=", 1)[0] for a in expanded}
                for n in sorted(names):
                    if not n.startswith("--"):
                        f.add(w, f"{n!r} is not a --flag")
                    elif not re.search(rf"^\s+{re.escape(n)}[\s\[=]", help_text, re.M):
                        f.add(w, f"{n} is not a flag of `aad-pod-identity {sub}` (see `aad-pod-identity {sub} --help`)")
                seen[sub] |= names
                # Environment variables the binary reads as flags are checked as those flags.
                from_env = [
                    f"{env_to_flag[k]}={v}" for k, v in env.items() if k in env_to_flag and env_to_flag[k] not in names
                ]
                # The binary's parser validates every value as it reads it and stops at --help, so
                # exit 0 means every name and value was accepted (nothing is started).
                cmd = [binary, sub, *expanded, *from_env, "--help"]
                run = subprocess.run(cmd, capture_output=True, text=True, env={})
                if run.returncode != 0:
                    f.add(w, f"`aad-pod-identity {sub}` refused the chart's args {expanded + from_env}: {run.stderr.strip()}")
                print(f"flags [{name}] {sub}: {len(expanded)} args + {len(from_env)} from env accepted: {' '.join(expanded + from_env)}")
    # A sanity check of the judge itself: a value the binary refuses is reported as refused.
    bad = subprocess.run([binary, "mic", "--leader-election-duration=15", "--help"], capture_output=True, text=True, env={})
    f.check(bad.returncode == 2, "flags", "the binary must refuse a bad value before --help (the check relies on it)")
    print(f"flags: MIC flags used {sorted(seen['mic'])}; NMI flags used {sorted(seen['nmi'])}")


# ---------------------------------------------------------------------------------------------
# alerts: promtool judges the PrometheusRule; unit tests show each alert fires when it should


def metric_names() -> dict[str, str]:
    return yaml.safe_load((CHART / "files" / "metrics.yaml").read_text())["names"]


def metric_origins() -> dict[str, str]:
    return yaml.safe_load((CHART / "files" / "metrics.yaml").read_text())["origin"]


def rendered_monitoring() -> list[dict]:
    values = value_sets()["monitoring-podmonitor"]
    objects, _ = render(values)
    return objects


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        print(f"{tool} is not installed (Debian package `prometheus`; .ci/run installs it)", file=sys.stderr)
        sys.exit(3)
    return path


def alert_tests(m: dict[str, str], rules_file: str) -> dict:
    """promtool unit tests: each alert fires on a bad series and stays quiet on a healthy one."""

    def hist(name, le_counts, extra=""):
        # cumulative bucket series growing by the given per-minute increments
        return [
            {"series": f'{name}_bucket{{le="{le}"{extra}}}', "values": f"0+{inc}x40"} for le, inc in le_counts
        ]

    slow = hist(m["assignmentLatency"], [("1", 0), ("30", 1), ("120", 10), ("+Inf", 10)])
    fast = hist(m["assignmentLatency"], [("1", 10), ("30", 10), ("120", 10), ("+Inf", 10)])
    throttled = [
        {"series": f'{m["armWrites"]}{{outcome="ok"}}', "values": "0+6x40"},
        {"series": f'{m["armWrites"]}{{outcome="throttled"}}', "values": "0+4x40"},
    ]
    calm = [
        {"series": f'{m["armWrites"]}{{outcome="ok"}}', "values": "0+10x40"},
        {"series": f'{m["armWrites"]}{{outcome="throttled"}}', "values": "0+0x40"},
    ]
    ops = lambda code, inc: {  # noqa: E731
        "series": f'{m["nmiOperations"]}_count{{operation_type="token",status_code="{code}",namespace="apps",resource="https://vault.azure.net"}}',
        "values": f"0+{inc}x40",
    }
    failing = [ops("200", 50), ops("404", 50)]
    healthy = [ops("200", 100), ops("404", 0)]
    refused = [{"series": f'{m["armWrites"]}{{outcome="refused"}}', "values": "0+1x40"}]
    upstream = [{"series": f'{m["imdsErrors"]}{{operation_type="token"}}', "values": "0+3x40"}]
    unguarded = [{"series": m["nodesWithoutNmi"], "values": "1x40"}]
    guarded = [{"series": m["nodesWithoutNmi"], "values": "0x40"}]
    gate_closed = [
        {"series": f'{m["nodeGateTainted"]}{{node="n1"}}', "values": "1x40"},
        {"series": f'{m["nodeGateTainted"]}{{node="n2"}}', "values": "0x40"},
    ]
    gate_open = [{"series": f'{m["nodeGateTainted"]}{{node="n1"}}', "values": "1 1 1 0x37"}]

    def case(series, fires: dict[str, list[dict]]):
        return {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": name, "exp_alerts": fires.get(name, [])}
                for name in (
                    "AADPodIdentityAssignmentLatencyHigh",
                    "AADPodIdentityARMThrottling",
                    "AADPodIdentityARMWritesRefused",
                    "AADPodIdentityTokenErrors",
                    "AADPodIdentityUpstreamTokenErrors",
                    "AADPodIdentityNodeWithoutNMI",
                    "AADPodIdentityNodeGateClosed",
                )
            ],
        }

    def fired(labels=None):
        return [{"exp_labels": {"severity": "warning", **(labels or {})}}]

    return {
        "rule_files": [rules_file],
        "evaluation_interval": "1m",
        "tests": [
            case(slow + throttled + failing + refused + upstream + unguarded + gate_closed, {
                "AADPodIdentityNodeWithoutNMI": [{"exp_labels": {"severity": "critical"}}],
                "AADPodIdentityNodeGateClosed": fired({"node": "n1"}),
                "AADPodIdentityAssignmentLatencyHigh": fired(),
                "AADPodIdentityARMThrottling": fired(),
                "AADPodIdentityARMWritesRefused": fired({"outcome": "refused"}),
                "AADPodIdentityTokenErrors": fired(),
                "AADPodIdentityUpstreamTokenErrors": fired(),
            }),
            case(fast + calm + healthy + guarded + gate_open, {}),
        ],
    }


def cmd_alerts(f: Failures) -> None:
    promtool = need("promtool")
    rules = find(rendered_monitoring(), "PrometheusRule")
    f.check(len(rules) == 1, "alerts", f"one PrometheusRule, found {len(rules)}")
    if not rules:
        return
    alerts = {r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"] if "alert" in r}
    for want in ("AADPodIdentityAssignmentLatencyHigh", "AADPodIdentityARMThrottling", "AADPodIdentityTokenErrors"):
        f.check(want in alerts, "alerts", f"{want} is defined")
    with tempfile.TemporaryDirectory() as tmp:
        rules_path = Path(tmp) / "rules.yaml"
        rules_path.write_text(yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}))
        run = subprocess.run([promtool, "check", "rules", str(rules_path)], capture_output=True, text=True)
        f.check(run.returncode == 0, "promtool check rules", run.stdout + run.stderr)
        print(run.stdout.strip())
        # The unit tests compare labels; annotations (templated text, already checked above) are
        # left out of the copy they run on.
        bare = copy.deepcopy(rules[0]["spec"]["groups"])
        for g in bare:
            for r in g["rules"]:
                r.pop("annotations", None)
        (Path(tmp) / "bare_rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
        tests_path = Path(tmp) / "rules_test.yaml"
        tests_path.write_text(yaml.safe_dump(alert_tests(metric_names(), "bare_rules.yaml")))
        run = subprocess.run([promtool, "test", "rules", str(tests_path)], capture_output=True, text=True, cwd=tmp)
        f.check(run.returncode == 0, "promtool test rules", run.stdout + run.stderr)
        print(run.stdout.strip())


# ---------------------------------------------------------------------------------------------
# dashboard: the Grafana JSON is well formed and every query parses


def cmd_dashboard(f: Failures) -> None:
    promtool = need("promtool")
    cms = [o for o in find(rendered_monitoring(), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    f.check(len(cms) == 1, "dashboard", f"one dashboard ConfigMap, found {len(cms)}")
    if not cms:
        return
    cm = cms[0]
    f.check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard", "labelled for Grafana's sidecar")
    f.check(cm["metadata"]["namespace"] == "monitoring", "dashboard", "monitoring.grafanaDashboard.namespace honoured")
    (key, text), = cm["data"].items()
    f.check(key.endswith(".json"), "dashboard", "data key ends in .json")
    f.check("@@" not in text, "dashboard", "every @@metric@@ placeholder replaced (unknown key in files/dashboard.json?)")
    dash = json.loads(text)
    f.check(bool(dash.get("title")) and bool(dash.get("uid")), "dashboard", "title and uid")
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    f.check(len(ids) == len(set(ids)), "dashboard", "panel ids are unique")
    exprs = []
    for p in panels:
        f.check(bool(p.get("targets")), "dashboard", f"panel {p['title']!r} has queries")
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
    # What the issue asks the dashboard to show.
    m = metric_names()
    for key in ("assignmentLatency", "armWrites", "tokenLatency"):
        f.check(any(m[key] in e for _, e in exprs), "dashboard", f"shows {m[key]}")
    # promtool parses every query (as a recording rule), with Grafana's variables substituted.
    rules = [
        {"record": f"dashboard:query:{i}", "expr": e.replace("$__rate_interval", "5m").replace("$__interval", "1m")}
        for i, (_, e) in enumerate(exprs)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard_queries.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        f.check(run.returncode == 0, "dashboard queries", run.stdout + run.stderr)
    print(f"dashboard: {len(panels)} panels, {len(exprs)} queries parsed by promtool")


# ---------------------------------------------------------------------------------------------
# metric-names: the chart queries only the names in files/metrics.yaml, and those exist


def cmd_metric_names(f: Failures) -> None:
    names = metric_names()
    origins = metric_origins()
    f.check(names.keys() == origins.keys(), "files/metrics.yaml", "every name has an origin")
    known = set(names.values())
    used: set[str] = set()
    sources = [p for p in (CHART / "templates").glob("*") if p.is_file()] + [CHART / "files" / "dashboard.json"]
    for p in sources:
        for n in re.findall(r"\baadpodidentity_[a-z0-9_]+", p.read_text()):
            used.add(n)
            f.add(str(p.relative_to(REPO)), f"metric name {n} written literally; use files/metrics.yaml")
    # Rendered rules and dashboard: every metric they query is listed.
    objects = rendered_monitoring()
    text = json.dumps([o for o in objects if o.get("kind") in ("PrometheusRule", "ConfigMap")])
    for n in set(re.findall(r"\baadpodidentity_[a-z0-9_]+", text)):
        base = re.sub(r"_(bucket|count|sum)$", "", n)
        f.check(n in known or base in known, "rendered monitoring", f"{n} is not in files/metrics.yaml")
        used.add(base if base in known else n)
    unused = known - used
    f.check(not unused, "files/metrics.yaml", f"names no alert or panel uses: {sorted(unused)}")
    # The original's names must be the ones src/metrics.rs registers.
    src_metrics = (REPO / "src" / "metrics.rs").read_text()
    src_all = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))
    pending = []
    for key, name in names.items():
        short = name.removeprefix("aadpodidentity_")
        if origins[key] == "original":
            f.check(f'"{short}"' in src_metrics, "files/metrics.yaml", f"{name} ({key}) is not registered in src/metrics.rs")
        elif f'"{short}"' not in src_all and f'"{name}"' not in src_all:
            pending.append(name)
    f.check(not pending, "files/metrics.yaml", f"metrics the chart queries but src/ never registers: {pending}")
    print(f"metric-names: {len(names)} names in files/metrics.yaml, all used by the alerts or the dashboard")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["lint", "validate", "content", "schema", "flags", "alerts", "dashboard", "metric-names", "all"])
    p.add_argument("--binary", help="path of the aad-pod-identity binary (for `flags`)")
    a = p.parse_args()
    f = Failures()
    commands = {
        "lint": lambda: cmd_lint(f),
        "validate": lambda: cmd_validate(f),
        "content": lambda: cmd_content(f),
        "schema": lambda: cmd_schema(f),
        "flags": lambda: cmd_flags(f, a.binary),
        "alerts": lambda: cmd_alerts(f),
        "dashboard": lambda: cmd_dashboard(f),
        "metric-names": lambda: cmd_metric_names(f),
    }
    for name in commands if a.command == "all" else [a.command]:
        if name == "flags" and a.command == "all" and not a.binary:
            print("flags: skipped (no --binary)")
            continue
        commands[name]()
    if f.items:
        print(f"\n{len(f.items)} failure(s):", file=sys.stderr)
        for item in f.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"{a.command}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
