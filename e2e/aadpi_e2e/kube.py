"""Kubernetes access for the suite: kubectl for every change, and reads through one
`kubectl proxy`, so any cluster kubectl can reach (kind, AKS, the sandbox) works the same way
and waiting costs a local HTTP request instead of a kubectl process."""

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


class KubeError(Exception):
    """A kubectl command or an API read failed."""


class Timeout(AssertionError):
    """A wait ran out; the message says what was awaited and what was last seen."""


class Kube:
    def __init__(self, kubeconfig, cache_dir=None, log=None):
        self.kubeconfig = kubeconfig
        self.cache_dir = cache_dir
        self.log = log or (lambda msg: None)
        self._proxy = None
        self.base = None

    # kubectl ---------------------------------------------------------------------------

    def _argv(self, args):
        argv = ["kubectl", "--kubeconfig", self.kubeconfig]
        if self.cache_dir:
            argv += ["--cache-dir", self.cache_dir]
        return argv + list(args)

    def kubectl(self, *args, stdin=None, check=True, timeout=180):
        """Runs kubectl; returns (returncode, stdout, stderr). Raises KubeError when `check`
        and kubectl failed."""
        argv = self._argv(args)
        self.log("$ kubectl " + " ".join(args))
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise KubeError(f"kubectl {' '.join(args)}: no answer within {timeout} s") from e
        except FileNotFoundError as e:
            raise KubeError("kubectl is not installed (it is the suite's only client)") from e
        if check and p.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.returncode, p.stdout, p.stderr

    def apply(self, *objects):
        """`kubectl apply` of the objects (dicts), as a YAML stream of JSON documents."""
        self.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))

    def delete(self, kind, name, namespace=None):
        args = ["delete", kind, name, "--ignore-not-found", "--wait=false"]
        if namespace:
            args += ["-n", namespace]
        self.kubectl(*args)

    # reads through kubectl proxy -------------------------------------------------------

    def start_proxy(self):
        """Starts `kubectl proxy` on a free loopback port for the reads."""
        argv = self._argv(["proxy", "--port=0", "--address=127.0.0.1"])
        self._proxy = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._proxy.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            err = self._proxy.stderr.read() if self._proxy.poll() is not None else ""
            self.close()
            raise KubeError(f"kubectl proxy did not start: {line.strip()} {err.strip()}")
        self.base = f"http://127.0.0.1:{m.group(1)}"
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=self._proxy.stdout.read, daemon=True).start()
        threading.Thread(target=self._proxy.stderr.read, daemon=True).start()

    def close(self):
        if self._proxy is not None:
            self._proxy.terminate()
            try:
                self._proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proxy.kill()
            self._proxy = None

    def raw(self, path, timeout=30):
        """GET `path` through the proxy: (status, body text)."""
        if self.base is None:
            raise KubeError("the API proxy is not running")
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            raise KubeError(f"GET {path}: {e}") from e

    def get(self, path):
        """The object at `path`, or None when the API server answers 404."""
        status, body = self.raw(path)
        if status == 404:
            return None
        if status != 200:
            raise KubeError(f"GET {path}: {status} {body[:300]}")
        return json.loads(body)

    def list(self, path, labels=None, fields=None):
        q = {}
        if labels:
            q["labelSelector"] = labels
        if fields:
            q["fieldSelector"] = fields
        if q:
            path += "?" + urllib.parse.urlencode(q)
        doc = self.get(path)
        return [] if doc is None else doc.get("items") or []

    # common paths ------------------------------------------------------------------------

    def pod(self, ns, name):
        return self.get(f"/api/v1/namespaces/{ns}/pods/{name}")

    def pods(self, ns, labels=None):
        return self.list(f"/api/v1/namespaces/{ns}/pods", labels=labels)

    def nodes(self):
        return self.list("/api/v1/nodes")

    def assigned_identities(self):
        """Every AzureAssignedIdentity in the cluster (MIC puts them in the identity's namespace
        in namespaced mode, else in `default`)."""
        return self.list("/apis/aadpodidentity.k8s.io/v1/azureassignedidentities")


def wait_for(what, fn, timeout, interval=0.25, describe=None):
    """Calls `fn` until it returns something truthy and returns that. At the deadline raises
    Timeout naming `what` and, when given, `describe()` of the last state."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last_error = None
        except KubeError as e:
            last_error = e
        if time.monotonic() >= deadline:
            state = ""
            if describe is not None:
                try:
                    state = f"; last seen: {describe()}"
                except Exception as e:  # the description is best effort
                    state = f"; (state unavailable: {e})"
            if last_error is not None:
                state += f"; last error: {last_error}"
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what}{state}")
        time.sleep(interval)
