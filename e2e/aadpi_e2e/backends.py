"""The two places the suite runs: the sandbox and a real cluster (kind or AKS).

Both are driven through kubectl and read through one `kubectl proxy` ([`kube.Kube`]); MIC's and
NMI's flags are read from their workloads ([`config.discover`]); scale sets are read through ARM
([`azure.Arm`]). What differs is small and lives here:

- how a request is made "as pod P": in the sandbox it leaves from the pod's loopback address
  towards its node's NMI (as iptables would deliver it); on a cluster it is made from inside
  the pod with `kubectl exec … curl`, as the original's e2e did with its validator pod;
- how MIC's and NMI's `/healthz` are read: the sandbox's endpoints document, or the API
  server's proxy to each pod on a cluster;
- where the Azure identities come from: the sandbox's simulated Azure, or an identity file."""

import http.client
import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass

from . import azure
from .config import ConfigError, discover, from_sandbox_endpoints
from .context import Skipped
from .kube import Kube, KubeError, wait_for

# On a real cluster, a pod reaches NMI by calling the instance metadata address, which NMI's
# iptables rule redirects to itself. Only ever called from inside the cluster's own pods.
CLUSTER_METADATA = "http://169.254.169.254"

TOKEN_API_VERSION = "2018-02-01"
DEFAULT_RESOURCE = "https://management.azure.com/"
DEFAULT_VALIDATOR_IMAGE = "curlimages/curl:latest"


@dataclass
class Answer:
    """What the pod got back. `status` 0 means no HTTP answer at all (`error` says why)."""
    status: int
    headers: dict
    body: str
    error: str = ""

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def brief(self):
        if self.status == 0:
            return f"no answer ({self.error})"
        return f"{self.status} {self.body[:200]!r}"


def parse_curl_include(out):
    """Parses `curl -i` output (status line, headers, blank line, body) into an Answer."""
    text = out.replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    # A `100 Continue` or a proxy's status may come first; the last head is the answer's.
    while lines and lines[0].startswith("HTTP/") and " 100 " in lines[0] and body.startswith("HTTP/"):
        head, _, body = body.partition("\n\n")
        lines = head.split("\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return Answer(0, {}, out, error=f"not an HTTP answer: {out[:200]!r}")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Answer(0, {}, out, error=f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    return Answer(status, headers, body)


def token_path(client_id=None, resource=DEFAULT_RESOURCE):
    from urllib.parse import urlencode
    q = {"api-version": TOKEN_API_VERSION, "resource": resource}
    if client_id:
        q["client_id"] = client_id
    return "/metadata/identity/oauth2/token?" + urlencode(q)


class Backend:
    """What the scenarios are written against."""

    name = "?"
    validator_image = DEFAULT_VALIDATOR_IMAGE
    # Seconds a step may take on this backend (ARM writes take 40-60 s on real scale sets).
    patience = 60.0
    # Seconds one scale-set write takes.
    arm_write = 60.0

    def __init__(self, kube, given, install):
        self.kube = kube
        self.given = given
        self.install = install
        self.arm = None
        sp = given.service_principal
        if sp is not None and given.arm_endpoint:
            self.arm = azure.Arm(given.arm_endpoint, given.authority, sp.tenant_id, sp.client_id, sp.secret)

    # requests "as a pod" ---------------------------------------------------------------------

    def request_as_pod(self, pod, path, headers, timeout):
        raise NotImplementedError

    def token(self, pod, client_id=None, resource=DEFAULT_RESOURCE, timeout=None):
        """A token request from inside `pod` (a pod object), as an Azure SDK sends it."""
        if timeout is None:
            timeout = self.install.nmi_wait + 30
        return self.request_as_pod(pod, token_path(client_id, resource), {"Metadata": "true"}, timeout)

    def health(self):
        """(component, pod, body) of every MIC and NMI pod's `/healthz`."""
        raise NotImplementedError

    def mic_metrics(self, pod):
        """The Prometheus text of the MIC replica running in `pod`."""
        raise NotImplementedError

    def mic_leader(self):
        """The pod name holding MIC's leader Lease, or None."""
        ns, name = self.install.lease
        lease = self.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    # Azure -------------------------------------------------------------------------------

    def throttle_arm(self, retry_after_seconds):
        """Makes ARM answer the next scale-set or VM write 429 with this `Retry-After`."""
        raise Skipped("a real ARM cannot be made to throttle on demand; the sandbox checks MIC's "
                      "Retry-After handling (crates/sandbox/tests/e2e.rs)")

    def arm_requests(self):
        """ARM requests as the Azure side saw them: dicts with atMs, method, path, status."""
        raise Skipped("ARM's request log is only readable in the sandbox")

    def scale_set_identities(self, node):
        """Lower-cased ids of the user-assigned identities on the scale set or VM of `node`."""
        if self.arm is None:
            raise ConfigError("reading scale sets needs the service principal (servicePrincipal in the identity file)")
        cid = azure.compute_id((node.get("spec") or {}).get("providerID"))
        if cid is None:
            raise ConfigError(f"node {node['metadata']['name']} is not an Azure VM (providerID "
                              f"{(node.get('spec') or {}).get('providerID')!r})")
        return self.arm.user_assigned(cid)

    def close(self):
        self.kube.close()


# The sandbox ---------------------------------------------------------------------------------

SANDBOX_FLAGS = [
    "--nmi-port=0",
    "--identities=24",
    "--arm-latency=100ms",
    "--mic-replicas=2",
    "--unassign-grace-period=2s",
    "--cron-speedup=20",
    "--job-run-time=6s",
    # A leader change costs one lease duration; the chart's 15 s is a real cluster's.
    "--mic-arg=--leader-election-duration=3s",
    # The flags the original's e2e switched on for its own scenarios, and an NMI wait short
    # enough that a refused token is answered in seconds (80 s by default).
    "--nmi-arg=--block-instance-metadata",
    "--nmi-arg=--set-retry-after-header",
    "--nmi-arg=--retry-attempts-for-created=2",
    "--nmi-arg=--retry-attempts-for-assigned=1",
    "--nmi-arg=--find-identity-retry-interval=1",
]


def _flag_key(flag):
    """What a sandbox flag sets: `--x` for `--x=v`, `--nmi-arg=--y` for `--nmi-arg=--y=v`."""
    name, _, value = flag.partition("=")
    if name in ("--nmi-arg", "--mic-arg"):
        return f"{name}={value.partition('=')[0]}"
    return name


def sandbox_flags(extra=()):
    """The suite's sandbox flags, with `extra` replacing those that set the same thing."""
    replaced = {_flag_key(f) for f in extra}
    return [f for f in SANDBOX_FLAGS if _flag_key(f) not in replaced] + list(extra)


def sandbox_binary(explicit=None):
    if explicit:
        return explicit
    if os.environ.get("AAD_POD_IDENTITY_SANDBOX_BIN"):
        return os.environ["AAD_POD_IDENTITY_SANDBOX_BIN"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    path = os.path.join(target, "debug", "aad-pod-identity-sandbox")
    if not os.access(path, os.X_OK):
        print("building the sandbox (cargo build -p aad-pod-identity-sandbox)", flush=True)
        subprocess.run(["cargo", "build", "-p", "aad-pod-identity-sandbox", "--bin",
                        "aad-pod-identity-sandbox"], cwd=root, check=True)
    return path


class SandboxBackend(Backend):
    name = "sandbox"
    patience = 60.0
    # --arm-latency=100ms; a removal is one GET and one PATCH.
    arm_write = 2.0

    def __init__(self, binary, work_dir, log, extra_flags=()):
        self.work_dir = work_dir
        kubeconfig = os.path.join(work_dir, "kubeconfig")
        self.endpoints_path = os.path.join(work_dir, "endpoints.json")
        empty = os.path.join(work_dir, "empty-scenario.yaml")
        open(empty, "w").close()
        self.log_path = os.path.join(work_dir, "sandbox.log")
        self._log_file = open(self.log_path, "w")
        argv = [binary, "--kubeconfig-out", kubeconfig, "--endpoints-out", self.endpoints_path,
                "--scenario", empty, *sandbox_flags(extra_flags)]
        log("$ " + " ".join(argv))
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for("the sandbox to announce itself", self._announced, timeout=120, interval=0.2)
            with open(self.endpoints_path) as f:
                doc = json.load(f)
            kube = Kube(kubeconfig, cache_dir=os.path.join(work_dir, "kube-cache"), log=log)
            kube.start_proxy()
            super().__init__(kube, from_sandbox_endpoints(doc), discover(kube))
        except BaseException:
            self._stop()
            raise

    def _announced(self):
        if self.proc.poll() is not None:
            with open(self.log_path) as f:
                tail = f.read()[-2000:]
            raise ConfigError(f"the sandbox exited ({self.proc.returncode}):\n{tail}")
        with open(self.log_path) as f:
            return "sandbox is running" in f.read()

    def _endpoints(self):
        # Rewritten by the sandbox whenever a MIC replica or an NMI starts or stops.
        with open(self.endpoints_path) as f:
            return json.load(f)

    def request_as_pod(self, pod, path, headers, timeout):
        ip = (pod.get("status") or {}).get("podIP")
        node = (pod.get("spec") or {}).get("nodeName")
        nmi = self._endpoints()["nmi"].get(node)
        if not ip or nmi is None:
            return Answer(0, {}, "", error=f"pod has no address or its node {node!r} no NMI")
        host, port = nmi["token"].removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout, source_address=(ip, 0))
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()},
                          r.read().decode("utf-8", "replace"))
        except OSError as e:
            return Answer(0, {}, "", error=str(e))
        finally:
            conn.close()

    def health(self):
        doc = self._endpoints()
        out = []
        for component, entries in (("mic", doc.get("micReplicas", {})), ("nmi", doc.get("nmi", {}))):
            for who, e in entries.items():
                out.append((component, who, _http_get(e["healthz"])))
        return out

    def throttle_arm(self, retry_after_seconds):
        _http_post_json(self._endpoints()["control"] + "/azure/faults",
                        {"target": "arm-patch", "times": 1, "retryAfterSeconds": int(retry_after_seconds)})

    def arm_requests(self):
        return json.loads(_http_get(self._endpoints()["control"] + "/azure/requests", strict=True))

    def mic_metrics(self, pod):
        replica = self._endpoints().get("micReplicas", {}).get(pod)
        if replica is None:
            raise KubeError(f"no MIC replica runs for pod {pod}")
        return _http_get(replica["metrics"])

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def close(self):
        super().close()
        self._stop()


def _http_post_json(url, doc, timeout=10):
    import urllib.request
    import urllib.error
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        raise KubeError(f"POST {url}: {e.code} {e.read().decode('utf-8', 'replace')[:300]}") from e
    except (urllib.error.URLError, OSError) as e:
        raise KubeError(f"POST {url}: {e}") from e


def _http_get(url, timeout=10, strict=False):
    """The body at `url`; an error becomes the body's text unless `strict` (then KubeError)."""
    import urllib.request
    import urllib.error
    if strict:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            raise KubeError(f"GET {url}: {e}") from e
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode('utf-8', 'replace')}"
    except (urllib.error.URLError, OSError) as e:
        return f"unreachable: {e}"


# A real cluster --------------------------------------------------------------------------------


class ClusterBackend(Backend):
    name = "cluster"
    # Real scale-set writes take 40 to 60 s, sometimes minutes.
    patience = 300.0
    arm_write = 120.0

    def __init__(self, kubeconfig, given, log, namespace=None, validator_image=None,
                 arm_endpoint=azure.PUBLIC_ARM, authority=azure.PUBLIC_AUTHORITY):
        given.arm_endpoint = arm_endpoint
        given.authority = authority
        kube = Kube(kubeconfig, log=log)
        kube.start_proxy()
        try:
            install = discover(kube, namespace)
        except BaseException:
            kube.close()
            raise
        super().__init__(kube, given, install)
        if validator_image:
            self.validator_image = validator_image

    def curl_argv(self, pod, path, headers, timeout):
        """The command run in the pod: curl, with the answer's head included."""
        argv = ["exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "-c", "validator",
                "--", "curl", "-sS", "-i", "--max-time", str(int(timeout))]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        return argv + [CLUSTER_METADATA + path]

    def request_as_pod(self, pod, path, headers, timeout):
        rc, out, err = self.kube.kubectl(*self.curl_argv(pod, path, headers, timeout),
                                         check=False, timeout=timeout + 60)
        if rc != 0 and not out.startswith("HTTP/"):
            return Answer(0, {}, out, error=f"kubectl exec … curl exited {rc}: {err.strip()[:300]}")
        return parse_curl_include(out)

    def mic_metrics(self, pod):
        port = int(self.install.mic_flags.get("prometheus-port", 8888))
        status, body = self.kube.raw(f"/api/v1/namespaces/{self.install.mic_namespace}/pods/{pod}:{port}/proxy/metrics")
        if status != 200:
            raise KubeError(f"MIC {pod} /metrics: {status} {body[:200]}")
        return body

    def health(self):
        out = []
        for component, ns, sel, port in (
                ("mic", self.install.mic_namespace, self.install.mic_selector, self.install.mic_probe_port),
                ("nmi", self.install.nmi_namespace, self.install.nmi_selector, self.install.nmi_probe_port)):
            for p in self.kube.pods(ns, labels=sel):
                if (p.get("status") or {}).get("phase") != "Running" or p["metadata"].get("deletionTimestamp"):
                    continue
                name = p["metadata"]["name"]
                # The API server's proxy to the pod: what the kubelet's probe sees.
                status, body = self.kube.raw(f"/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/healthz")
                out.append((component, name, body if status == 200 else f"HTTP {status}: {body[:200]}"))
        return out


def make_temp_dir():
    return tempfile.mkdtemp(prefix="aadpi-e2e-")
