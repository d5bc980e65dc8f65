"""What the suite is given and what it finds.

- The identity file (real clusters): Azure identities the scenarios may bind, and a service
  principal (for the type-1 scenario, and to read scale sets through ARM). In the sandbox the
  same structure is built from the sandbox's endpoints document.
- The installation, read from MIC's Deployment and NMI's DaemonSet: the flags they run with
  decide what the scenarios expect (grace period, NMI's wait, blocked metadata, Retry-After,
  namespaced matching) and where MIC's leader lock is. The sandbox's workloads carry the flags
  its MIC and NMI really run with, so both backends are read the same way."""

import json
import os
import re
from dataclasses import dataclass, field

from .kube import KubeError

RESOURCE_ID = re.compile(
    r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.managedidentity/"
    r"userassignedidentities/[^/]+$",
    re.IGNORECASE,
)
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


class ConfigError(Exception):
    """The suite cannot run as asked; the message says what to give it."""


@dataclass(frozen=True)
class Identity:
    name: str
    resource_id: str
    client_id: str


@dataclass(frozen=True)
class ServicePrincipal:
    tenant_id: str
    client_id: str
    secret: str


@dataclass
class Given:
    """Azure things the scenarios use."""
    identities: list
    service_principal: ServicePrincipal = None
    arm_endpoint: str = None
    authority: str = None


def _first(d, *keys):
    for k in keys:
        if d.get(k):
            return d[k]
    return None


def load_identity_file(path, env=os.environ):
    """Parses an identity file (JSON):

        {"tenantID": "<tenant>",
         "identities": [{"name": "e2e-0", "resourceID": "/subscriptions/…", "clientID": "…"}, …],
         "servicePrincipal": {"clientID": "…", "clientSecret": "…"}}

    `identities` may be the output of `az identity list` as is (`id`, `clientId`, `tenantId`).
    `E2E_SP_CLIENT_SECRET` overrides (or supplies) the service principal's secret, so the file
    need not hold it."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ConfigError(f"identity file {path}: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"identity file {path} is not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("identities"), list):
        raise ConfigError(f"identity file {path}: expected an object with an 'identities' list")
    identities = []
    tenant = doc.get("tenantID") or doc.get("tenantId")
    for i, raw in enumerate(doc["identities"]):
        if not isinstance(raw, dict):
            raise ConfigError(f"identity file {path}: identities[{i}] is not an object")
        rid = _first(raw, "resourceID", "id")
        cid = _first(raw, "clientID", "clientId")
        name = raw.get("name") or (rid or "").rsplit("/", 1)[-1]
        if not rid or not RESOURCE_ID.match(rid):
            raise ConfigError(
                f"identity file {path}: identities[{i}] needs 'resourceID' of the form "
                "/subscriptions/<s>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/"
                f"userAssignedIdentities/<name>, got {rid!r}")
        if not cid or not GUID.match(cid):
            raise ConfigError(f"identity file {path}: identities[{i}] needs 'clientID' (a GUID), got {cid!r}")
        tenant = tenant or raw.get("tenantId")
        identities.append(Identity(name=name, resource_id=rid, client_id=cid))
    names = [i.name for i in identities]
    if len(set(n.lower() for n in names)) != len(names):
        raise ConfigError(f"identity file {path}: identity names must be distinct: {names}")
    sp = None
    raw = doc.get("servicePrincipal")
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigError(f"identity file {path}: 'servicePrincipal' must be an object")
        secret = env.get("E2E_SP_CLIENT_SECRET") or _first(raw, "clientSecret", "secret")
        cid = _first(raw, "clientID", "clientId", "appId")
        sp_tenant = _first(raw, "tenantID", "tenantId", "tenant") or tenant
        missing = [k for k, v in (("clientID", cid), ("clientSecret (or E2E_SP_CLIENT_SECRET)", secret),
                                  ("tenantID", sp_tenant)) if not v]
        if missing:
            raise ConfigError(f"identity file {path}: servicePrincipal lacks {', '.join(missing)}")
        sp = ServicePrincipal(tenant_id=sp_tenant, client_id=cid, secret=secret)
    return Given(identities=identities, service_principal=sp)


def from_sandbox_endpoints(doc):
    """The same structure from the sandbox's `--endpoints-out` document."""
    az = doc["azure"]
    identities = sorted(
        (Identity(name=i["name"], resource_id=i["resourceID"], client_id=i["clientID"])
         for i in az["identities"]),
        key=lambda i: i.name)
    wsp = az.get("workloadServicePrincipal")
    sp = None
    if wsp:
        sp = ServicePrincipal(tenant_id=wsp["tenantID"], client_id=wsp["clientID"], secret=wsp["secret"])
    return Given(identities=identities, service_principal=sp,
                 arm_endpoint=az["arm"], authority=az["aad"])


# Flags of the installation ---------------------------------------------------------------


def parse_flags(args):
    """`--name=value` and bare `--name` (true) of a container's arguments; the chart writes
    every flag in one of these forms. Later occurrences win, as with the binaries' parser."""
    flags = {}
    for a in args or []:
        if not a.startswith("-"):
            continue
        name, eq, value = a.lstrip("-").partition("=")
        flags[name] = value if eq else True
    return flags


def flag_bool(flags, name, default):
    v = flags.get(name, default)
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "t", "true", "y", "yes")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text):
    """Seconds of a Go duration (`1m30s`, `2000ms`); a bare number is seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass
class Installation:
    """MIC and NMI as installed: where they run and the flags that matter to the scenarios."""
    mic_namespace: str
    mic_selector: str
    mic_replicas: int
    mic_flags: dict
    nmi_namespace: str
    nmi_selector: str
    nmi_flags: dict
    notes: list = field(default_factory=list)

    @property
    def lease(self):
        return (str(self.mic_flags.get("leader-election-namespace", "default")),
                str(self.mic_flags.get("leader-election-name", "aad-pod-identity-mic")))

    @property
    def lease_duration(self):
        return go_duration(self.mic_flags.get("leader-election-duration", "15s"))

    @property
    def unassign_grace(self):
        return go_duration(self.mic_flags.get("unassign-grace-period", "60s"))

    @property
    def mic_namespaced(self):
        return flag_bool(self.mic_flags, "forceNamespaced", True)

    @property
    def nmi_namespaced(self):
        return flag_bool(self.nmi_flags, "forceNamespaced", True)

    @property
    def block_instance_metadata(self):
        return flag_bool(self.nmi_flags, "block-instance-metadata", False)

    @property
    def set_retry_after_header(self):
        return flag_bool(self.nmi_flags, "set-retry-after-header", False)

    @property
    def nmi_wait(self):
        """Longest NMI waits for an identity before answering that it has none (seconds)."""
        interval = float(self.nmi_flags.get("find-identity-retry-interval", 5))
        created = int(self.nmi_flags.get("retry-attempts-for-created", 16))
        assigned = int(self.nmi_flags.get("retry-attempts-for-assigned", 4))
        return (created + assigned) * interval

    @property
    def mic_probe_port(self):
        return int(self.mic_flags.get("http-probe-port", 8080))

    @property
    def nmi_probe_port(self):
        return int(self.nmi_flags.get("http-probe-port", 8080))


def _container_args(workload, component):
    containers = workload["spec"]["template"]["spec"].get("containers") or []
    c = next((c for c in containers if c.get("name") == component), containers[0] if containers else {})
    return (c.get("command") or [])[1:] + (c.get("args") or [])


def _selector(workload):
    labels = (workload["spec"].get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def discover(kube, namespace=None):
    """Finds MIC's Deployment and NMI's DaemonSet (labelled `app.kubernetes.io/component=mic`
    and `=nmi`, as the chart labels them) and reads their flags."""
    def find(kind, component):
        path = f"/apis/apps/v1/namespaces/{namespace}/{kind}" if namespace else f"/apis/apps/v1/{kind}"
        found = kube.list(path, labels=f"app.kubernetes.io/component={component}")
        if len(found) != 1:
            where = f"namespace {namespace}" if namespace else "any namespace"
            names = [f"{w['metadata']['namespace']}/{w['metadata']['name']}" for w in found]
            raise ConfigError(
                f"expected one {kind[:-1]} labelled app.kubernetes.io/component={component} in {where}, "
                f"found {len(found)} {names}; is AAD Pod Identity installed (docs/install.md)? "
                "--system-namespace picks one installation")
        return found[0]
    try:
        mic = find("deployments", "mic")
        nmi = find("daemonsets", "nmi")
    except KubeError as e:
        raise ConfigError(f"cannot read the cluster: {e}") from e
    return Installation(
        mic_namespace=mic["metadata"]["namespace"],
        mic_selector=_selector(mic),
        mic_replicas=int(mic["spec"].get("replicas", 1)),
        mic_flags=parse_flags(_container_args(mic, "mic")),
        nmi_namespace=nmi["metadata"]["namespace"],
        nmi_selector=_selector(nmi),
        nmi_flags=parse_flags(_container_args(nmi, "nmi")),
    )
