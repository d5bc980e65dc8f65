"""What a scenario works with: its own namespaces, its identities, object builders, waits and
checks, and the cleanup that leaves no AzureAssignedIdentity behind."""

import random
import string
import threading
import time
import uuid

from .azure import AzureError, jwt_claims
from .config import Identity
from .kube import wait_for

POD_LABEL = "aadpodidbinding"
API = "aadpodidentity.k8s.io/v1"


class Failed(AssertionError):
    """A scenario's expectation did not hold."""


class Skipped(Exception):
    """A scenario cannot run on this backend (the message says why); listed as SKIP."""


def suffix(n=5):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def azure_identity(name, ns, identity):
    return {"apiVersion": API, "kind": "AzureIdentity", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": 0, "resourceID": identity.resource_id, "clientID": identity.client_id}}


def binding(name, ns, identity_name, selector):
    return {"apiVersion": API, "kind": "AzureIdentityBinding", "metadata": {"name": name, "namespace": ns},
            "spec": {"azureIdentity": identity_name, "selector": selector}}


class Test:
    """One scenario's run."""

    def __init__(self, name, backend, identities, log):
        self.name = name
        self.backend = backend
        self.kube = backend.kube
        self.install = backend.install
        self.identities = identities
        self._log = log
        self.steps = []
        self.namespaces = []
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.ns = self.namespace()

    # log ---------------------------------------------------------------------------------

    def step(self, msg):
        line = f"{time.monotonic() - self.started:7.2f}s  {msg}"
        with self._lock:
            self.steps.append(line)
        self._log(f"[{self.name}] {msg}")

    def check(self, cond, msg):
        if not cond:
            raise Failed(msg)

    # objects -------------------------------------------------------------------------------

    def namespace(self):
        ns = f"e2e-{self.name[:40]}-{suffix()}"
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.namespaces.append(ns)
        return ns

    def bind(self, identity, selector, name=None, ns=None):
        """An AzureIdentity for `identity` and a binding selecting `selector`; returns the
        AzureIdentity's name."""
        ns = ns or self.ns
        name = name or identity.name
        self.kube.apply(azure_identity(name, ns, identity), binding(f"{name}-binding", ns, name, selector))
        self.step(f"AzureIdentity {ns}/{name} ({identity.name}) bound to selector {selector}")
        return name

    def pod_spec(self, node=None, command=None):
        spec = {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "validator",
                "image": self.backend.validator_image,
                "command": command or ["sleep", "86400"],
            }],
        }
        if node:
            spec["nodeName"] = node
        return spec

    def validator(self, name, selector=None, node=None, labels=None, ns=None):
        """A validator pod (an image with curl that sleeps), labelled with `selector`."""
        ns = ns or self.ns
        meta_labels = dict(labels or {})
        if selector:
            meta_labels[POD_LABEL] = selector
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": meta_labels},
                "spec": self.pod_spec(node)}

    def running(self, name, ns=None, timeout=None):
        """Waits for pod `name` to run; returns the pod object."""
        ns = ns or self.ns

        def ready():
            p = self.kube.pod(ns, name)
            return p if p and (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP") else None
        pod = wait_for(f"pod {ns}/{name} Running", ready, timeout or self.backend.patience + 120,
                       describe=lambda: (self.kube.pod(ns, name) or {}).get("status"))
        self.step(f"pod {ns}/{name} runs on {pod['spec']['nodeName']} ({pod['status']['podIP']})")
        return pod

    def start_pods(self, *pods):
        self.kube.apply(*pods)
        return [self.running(p["metadata"]["name"], p["metadata"]["namespace"]) for p in pods]

    # AzureAssignedIdentities ---------------------------------------------------------------

    def assignments(self, pod_ns=None):
        """AzureAssignedIdentities of pods in this scenario's namespaces (or in `pod_ns`)."""
        spaces = [pod_ns] if pod_ns else self.namespaces
        return [a for a in self.kube.assigned_identities()
                if (a.get("spec") or {}).get("podNamespace") in spaces]

    def assignment(self, pod, identity_name, ns=None):
        ns = ns or self.ns
        for a in self.assignments(ns):
            s = a.get("spec") or {}
            if s.get("pod") == pod and (s.get("azureIdentityRef") or {}).get("metadata", {}).get("name") == identity_name:
                return a
        return None

    def _describe(self, ns=None):
        return [f"{a['metadata']['name']}: {(a.get('status') or {}).get('status')}" for a in self.assignments(ns)]

    def wait_state(self, pod, identity_name, state="Assigned", ns=None, timeout=None):
        """Waits for the AzureAssignedIdentity of (pod, identity) to reach `state`."""
        ns = ns or self.ns

        def reached():
            a = self.assignment(pod, identity_name, ns)
            return a if a and (a.get("status") or {}).get("status") == state else None
        a = wait_for(f"AzureAssignedIdentity of {ns}/{pod} for {identity_name} {state}", reached,
                     timeout or self.backend.patience, describe=lambda: self._describe(ns))
        self.step(f"{a['metadata']['namespace']}/{a['metadata']['name']} {state}")
        return a

    def wait_gone(self, pod, identity_name, ns=None, timeout=None):
        ns = ns or self.ns
        wait_for(f"AzureAssignedIdentity of {ns}/{pod} for {identity_name} deleted",
                 lambda: self.assignment(pod, identity_name, ns) is None,
                 timeout or self.backend.patience, describe=lambda: self._describe(ns))
        self.step(f"no AzureAssignedIdentity left for {ns}/{pod} and {identity_name}")

    def wait_count(self, n, ns=None, timeout=None):
        wait_for(f"{n} AzureAssignedIdentities in {ns or self.namespaces}",
                 lambda: len(self.assignments(ns)) == n, timeout or self.backend.patience,
                 describe=lambda: self._describe(ns))
        self.step(f"{n} AzureAssignedIdentities")

    # tokens ---------------------------------------------------------------------------------

    def pod(self, name, ns=None):
        p = self.kube.pod(ns or self.ns, name)
        self.check(p is not None, f"pod {ns or self.ns}/{name} does not exist")
        return p

    def expect_token(self, pod, identity=None, client_id=None, ask_for=True):
        """A token request as `pod` for `identity` (by its client id unless `ask_for` is False)
        gets 200 and a token issued to that identity."""
        pod = self.pod(pod) if isinstance(pod, str) else pod
        want = client_id or identity.client_id
        ans = self.backend.token(pod, want if ask_for else None)
        who = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.check(ans.status == 200, f"token for {who} as {want}: expected 200, got {ans.brief()}")
        doc = ans.json() or {}
        tok = doc.get("access_token")
        self.check(bool(tok), f"token for {who}: no access_token in {ans.body[:200]!r}")
        try:
            claims = jwt_claims(tok)
        except AzureError as e:
            raise Failed(f"token for {who}: {e}") from e
        got = claims.get("appid") or claims.get("azp") or ""
        self.check(got.lower() == want.lower(),
                   f"token for {who}: issued to {got!r}, expected {want!r}")
        self.step(f"{who} got a token for {want}")
        return claims

    def expect_refused(self, pod, identity=None, client_id=None):
        """A token request as `pod` for `identity` is refused (not 200)."""
        pod = self.pod(pod) if isinstance(pod, str) else pod
        want = client_id or identity.client_id
        ans = self.backend.token(pod, want)
        who = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.check(ans.status not in (0, 200), f"token for {who} as {want}: expected a refusal, got {ans.brief()}")
        self.step(f"{who} refused a token for {want} ({ans.status})")
        return ans

    # Azure ---------------------------------------------------------------------------------

    def node(self, name):
        n = self.kube.get(f"/api/v1/nodes/{name}")
        self.check(n is not None, f"node {name} does not exist")
        return n

    def on_scale_set(self, node, identity):
        try:
            return identity.resource_id.lower() in self.backend.scale_set_identities(self.node(node))
        except AzureError as e:
            raise Failed(f"reading the scale set of {node}: {e}") from e

    # cleanup ----------------------------------------------------------------------------------

    def cleanup(self):
        """Deletes what the scenario made, namespace by namespace, and waits until MIC has
        deleted every AzureAssignedIdentity of its pods."""
        kinds = ("cronjobs.batch,jobs.batch,deployments.apps,pods,azureidentitybindings,"
                 "azureidentities,azurepodidentityexceptions,secrets")
        for ns in self.namespaces:
            self.kube.kubectl("delete", kinds, "--all", "-n", ns, "--wait=false", check=False)
        try:
            wait_for("MIC to delete the scenario's AzureAssignedIdentities",
                     lambda: not self.assignments(), self.backend.patience + 60,
                     describe=lambda: self._describe())
        finally:
            for ns in self.namespaces:
                self.kube.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def fake_identity(like, n):
    """An identity that does not exist in Azure, in the resource group of `like`."""
    base = like.resource_id.rsplit("/", 1)[0]
    name = f"e2e-invalid-{suffix()}-{n}"
    return Identity(name=name, resource_id=f"{base}/{name}", client_id=str(uuid.uuid4()))
