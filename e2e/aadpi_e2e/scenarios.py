"""The scenarios: the original's e2e list, written once against the backend interface.

Each scenario gets its own namespace and its own Azure identities (disjoint from those of any
scenario running at the same time), and must leave no AzureAssignedIdentity behind. Scenarios
marked exclusive (a node drain, a leader change) run alone, after the others."""

import random
import time
from dataclasses import dataclass

from .context import API, POD_LABEL, Failed, azure_identity, binding, fake_identity
from .kube import wait_for


@dataclass(frozen=True)
class Scenario:
    name: str
    run: object
    identities: int = 0
    exclusive: bool = False
    needs_service_principal: bool = False
    needs_arm: bool = False
    about: str = ""


SCENARIOS = []


def scenario(name, identities=0, exclusive=False, needs_service_principal=False, needs_arm=False):
    def register(fn):
        SCENARIOS.append(Scenario(name, fn, identities, exclusive, needs_service_principal, needs_arm,
                                  (fn.__doc__ or "").strip().split("\n")[0]))
        return fn
    return register


def _single(t, identity, selector="validator"):
    """An identity bound to a validator pod; returns (pod, AzureIdentity name, assignment)."""
    name = t.bind(identity, selector, name="identity")
    (pod,) = t.start_pods(t.validator("validator", selector))
    a = t.wait_state("validator", name)
    return pod, name, a


@scenario("single-identity", identities=1, needs_arm=True)
def single_identity(t):
    """One identity: Assigned as the original names and labels it, on the node's scale set, token."""
    ident = t.identities[0]
    pod, name, a = _single(t, ident)
    node = pod["spec"]["nodeName"]
    want = f"validator-{t.ns}-{name}"
    t.check(a["metadata"]["name"] == want, f"AzureAssignedIdentity named {a['metadata']['name']}, expected {want}")
    t.check((a["metadata"].get("labels") or {}).get("nodename") == node,
            f"AzureAssignedIdentity labels {a['metadata'].get('labels')}, expected nodename={node}")
    t.check(a["spec"].get("nodename") == node, f"spec.nodename {a['spec'].get('nodename')}, expected {node}")
    t.check(t.on_scale_set(node, ident), f"{ident.name} is not on the scale set of {node}")
    t.step(f"{ident.name} is on the scale set of {node}")
    t.expect_token(pod, ident)
    # With one identity bound, a request naming none gets that one.
    t.expect_token(pod, ident, ask_for=False)


@scenario("pod-deletion", identities=1)
def pod_deletion(t):
    """Deleting the pod deletes its AzureAssignedIdentity."""
    _single(t, t.identities[0])
    t.kube.delete("pod", "validator", t.ns)
    t.wait_count(0)


@scenario("binding-deletion", identities=1)
def binding_deletion(t):
    """Deleting the binding deletes the assignment; the pod's token is refused."""
    pod, name, _ = _single(t, t.identities[0])
    t.expect_token(pod, t.identities[0])
    t.kube.delete("azureidentitybinding", f"{name}-binding", t.ns)
    t.wait_gone("validator", name)
    t.expect_refused(pod, t.identities[0])


@scenario("identity-deletion", identities=1)
def identity_deletion(t):
    """Deleting the AzureIdentity deletes the assignment; the pod's token is refused."""
    pod, name, _ = _single(t, t.identities[0])
    t.expect_token(pod, t.identities[0])
    t.kube.delete("azureidentity", name, t.ns)
    t.wait_gone("validator", name)
    t.expect_refused(pod, t.identities[0])


@scenario("label-change", identities=2)
def label_change(t):
    """Relabelling a pod moves it from one identity to another."""
    a, b = t.identities[:2]
    na = t.bind(a, "first", name="first")
    nb = t.bind(b, "second", name="second")
    (pod,) = t.start_pods(t.validator("validator", "first"))
    t.wait_state("validator", na)
    t.expect_token(pod, a)
    t.kube.kubectl("label", "pod", "validator", "-n", t.ns, f"{POD_LABEL}=second", "--overwrite")
    t.step("relabelled the pod to selector second")
    t.wait_state("validator", nb)
    t.wait_gone("validator", na)
    t.expect_token("validator", b)
    t.expect_refused("validator", a)


@scenario("multiple-identities", identities=5)
def multiple_identities(t):
    """Five identities added at once and removed in random order; two through one selector."""
    ids = t.identities[:5]
    names = [t.bind(ident, f"sel-{i}", name=f"identity-{i}") for i, ident in enumerate(ids)]
    # A pod using two identities through one selector (the seed's az-id-combined).
    t.kube.apply(binding("combined-0", t.ns, names[0], "combined"),
                 binding("combined-1", t.ns, names[1], "combined"))
    pods = t.start_pods(*[t.validator(f"validator-{i}", f"sel-{i}") for i in range(5)],
                        t.validator("combined", "combined"))
    for i in range(5):
        t.wait_state(f"validator-{i}", names[i])
    t.wait_state("combined", names[0])
    t.wait_state("combined", names[1])
    t.expect_token(pods[5], ids[0])
    t.expect_token(pods[5], ids[1])
    t.expect_refused(pods[5], ids[2])
    order = list(range(5))
    random.shuffle(order)
    t.step(f"deleting the identities in the order {order}")
    for k, i in enumerate(order):
        t.kube.delete("azureidentity", names[i], t.ns)
        t.wait_gone(f"validator-{i}", names[i])
        t.expect_refused(f"validator-{i}", ids[i])
        for j in order[k + 1:]:
            t.wait_state(f"validator-{j}", names[j])
            t.expect_token(f"validator-{j}", ids[j])


@scenario("same-names-two-namespaces", identities=2)
def same_names(t):
    """The same AzureIdentity and binding names in two namespaces stay apart."""
    ns2 = t.namespace()
    spaces = ((t.ns, t.identities[0]), (ns2, t.identities[1]))
    for ns, ident in spaces:
        t.bind(ident, "shared", name="identity", ns=ns)
    pods = t.start_pods(*[t.validator("validator", "shared", ns=ns) for ns, _ in spaces])
    for (ns, ident), pod in zip(spaces, pods):
        a = t.wait_state("validator", "identity", ns=ns)
        s = a["spec"]
        for ref in ("azureIdentityRef", "azureBindingRef"):
            got = (s.get(ref) or {}).get("metadata", {}).get("namespace")
            t.check(got == ns, f"{a['metadata']['name']}.spec.{ref} is in {got}, expected {ns}")
        rid = (s.get("azureIdentityRef") or {}).get("spec", {}).get("resourceID", "")
        t.check(rid.lower() == ident.resource_id.lower(),
                f"{a['metadata']['name']} refers to {rid}, expected {ident.resource_id}")
        t.expect_token(pod, ident)
    if t.install.nmi_namespaced:
        # Namespaced matching (the default): neither pod gets the other namespace's identity.
        t.expect_refused(pods[0], t.identities[1])
        t.expect_refused(pods[1], t.identities[0])
    else:
        t.step("NMI runs with --forceNamespaced=false: cross-namespace refusals not expected")


def _scale_set_pair(t):
    """Two schedulable nodes of one scale set."""
    groups = {}
    for n in t.kube.nodes():
        if (n.get("spec") or {}).get("unschedulable"):
            continue
        pid = (n.get("spec") or {}).get("providerID", "")
        if "/virtualmachinescalesets/" in pid.lower():
            groups.setdefault(pid.lower().split("/virtualmachines/")[0], []).append(n["metadata"]["name"])
    for nodes in groups.values():
        if len(nodes) >= 2:
            return sorted(nodes)[:2]
    raise Failed(f"needs a scale set with two schedulable nodes; found {groups or 'no scale-set nodes'}")


@scenario("in-use-protection", identities=1, needs_arm=True)
def in_use(t):
    """An identity still used by another pod of the scale set stays; it goes with the last pod."""
    ident = t.identities[0]
    n1, n2 = _scale_set_pair(t)
    grace = t.install.unassign_grace
    settle = grace + t.backend.patience
    # MIC never removes an identity it did not add: start from a scale set without it.
    wait_for(f"{ident.name} off the scale set of {n1} before the scenario",
             lambda: not t.on_scale_set(n1, ident), settle)
    name = t.bind(ident, "shared", name="identity")
    p1, p2 = t.start_pods(t.validator("first", "shared", node=n1), t.validator("second", "shared", node=n2))
    t.wait_state("first", name)
    t.wait_state("second", name)
    t.check(t.on_scale_set(n1, ident), f"{ident.name} is not on the scale set of {n1}")
    t.kube.delete("pod", "second", t.ns)
    t.wait_gone("second", name)
    t.step(f"waiting past MIC's unassign grace period ({grace:.0f} s) and a scale-set write")
    time.sleep(grace + t.backend.arm_write)
    t.check(t.on_scale_set(n1, ident), f"{ident.name} was removed while pod first on {n1} still uses it")
    t.step(f"{ident.name} stays on the scale set while pod first uses it")
    t.expect_token(p1, ident)
    t.kube.delete("pod", "first", t.ns)
    t.wait_gone("first", name)
    wait_for(f"{ident.name} removed from the scale set once no pod uses it",
             lambda: not t.on_scale_set(n1, ident), settle)
    t.step(f"{ident.name} left the scale set with its last pod")


@scenario("invalid-identity-in-batch", identities=1)
def invalid_in_batch(t):
    """Identities that do not exist stay Created; the valid ones in the same batch are Assigned."""
    good = t.identities[0]
    bad = [fake_identity(good, 1), fake_identity(good, 2)]
    name = t.bind(good, "good", name="good")
    bad_names = [t.bind(b, f"bad-{i}", name=f"bad-{i}") for i, b in enumerate(bad)]
    (first,) = t.start_pods(t.validator("first", "good"))
    t.wait_state("first", name)
    t.expect_token(first, good)
    # A batch of one valid and two invalid identities, created together.
    t.start_pods(t.validator("second", "good"), t.validator("bad-0", "bad-0"), t.validator("bad-1", "bad-1"))
    t.wait_state("second", name)
    for i, n in enumerate(bad_names):
        t.wait_state(f"bad-{i}", n, state="Created")
    t.expect_token("second", good)
    t.expect_token(first, good)
    time.sleep(2)
    for i, n in enumerate(bad_names):
        a = t.assignment(f"bad-{i}", n)
        state = (a.get("status") or {}).get("status") if a else None
        t.check(state == "Created", f"the invalid identity bad-{i} became {state}, expected it to stay Created")


@scenario("node-drain", identities=1, exclusive=True)
def node_drain(t):
    """`kubectl drain NODE --ignore-daemonsets --force`: the identity follows the pod."""
    ident = t.identities[0]
    name = t.bind(ident, "mover", name="identity")
    t.kube.apply({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mover", "namespace": t.ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mover"}},
                 "template": {"metadata": {"labels": {"app": "mover", POD_LABEL: "mover"}},
                              "spec": t.pod_spec()}}})

    def running_pods():
        return [p for p in t.kube.pods(t.ns, labels="app=mover")
                if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    (old,) = wait_for("the Deployment's pod Running", running_pods, t.backend.patience + 120)
    old_name, node = old["metadata"]["name"], old["spec"]["nodeName"]
    t.wait_state(old_name, name)
    schedulable = [n for n in t.kube.nodes() if not (n.get("spec") or {}).get("unschedulable")]
    t.check(len(schedulable) >= 2, "needs two schedulable nodes to drain one")
    try:
        t.step(f"draining {node}")
        _, out, _ = t.kube.kubectl("drain", node, "--ignore-daemonsets", "--force", "--delete-emptydir-data",
                                   "--timeout=300s", timeout=400)
        # kubectl says "evicting pod" when it uses the Eviction API (and "deleting pod" when the
        # server lacks it): a drain that only deleted would not be the drain users run.
        t.check(f"evicting pod {t.ns}/{old_name}" in out and f"pod/{old_name} evicted" in out,
                f"kubectl drain did not evict {t.ns}/{old_name} through the Eviction API:\n{out[-1000:]}")
        t.step(f"kubectl drain evicted {old_name} (policy/v1 Eviction)")
        (new,) = wait_for("a new pod Running on another node",
                          lambda: [p for p in running_pods() if p["metadata"]["name"] != old_name],
                          t.backend.patience + 120)
        new_name, new_node = new["metadata"]["name"], new["spec"]["nodeName"]
        t.check(new_node != node, f"the new pod runs on the drained node {node}")
        a = t.wait_state(new_name, name)
        t.check(a["spec"].get("nodename") == new_node, f"assigned on {a['spec'].get('nodename')}, expected {new_node}")
        t.wait_gone(old_name, name)
        t.expect_token(new, ident)
    finally:
        t.kube.kubectl("uncordon", node, check=False)


@scenario("exception", identities=1)
def exception(t):
    """A pod matching an AzurePodIdentityException gets the node's own answer; others do not."""
    ident = t.identities[0]
    name = t.bind(ident, "holder", name="identity")
    (holder,) = t.start_pods(t.validator("holder", "holder"))
    node = holder["spec"]["nodeName"]
    t.wait_state("holder", name)
    # The identity is now on the node's scale set; only the exception lets an unbound pod use it.
    t.kube.apply({"apiVersion": API, "kind": "AzurePodIdentityException",
                  "metadata": {"name": "excepted", "namespace": t.ns},
                  "spec": {"podLabels": {"e2e-exception": "yes"}}})
    excepted, plain = t.start_pods(t.validator("excepted", labels={"e2e-exception": "yes"}, node=node),
                                   t.validator("plain", node=node))
    t.expect_token(excepted, ident)
    t.expect_refused(plain, ident)



@scenario("blocked-instance-metadata")
def blocked_instance_metadata(t):
    """With --block-instance-metadata, a pod's /metadata/instance is answered 403."""
    t.check(t.install.block_instance_metadata,
            f"NMI runs without --block-instance-metadata (flags {t.install.nmi_flags}); install with "
            "--set nmi.blockInstanceMetadata=true (docs/install.md) or leave this scenario out with --skip")
    (pod,) = t.start_pods(t.validator("plain"))
    ans = t.backend.request_as_pod(pod, "/metadata/instance?api-version=2021-02-01", {"Metadata": "true"}, 60)
    t.check(ans.status == 403, f"/metadata/instance: expected 403, got {ans.brief()}")
    t.step("/metadata/instance answered 403")


@scenario("liveness")
def liveness(t):
    """/healthz: the MIC leader Active, the others Not Active, every NMI Active."""
    install = t.install

    def probes():
        mic_pods = [p for p in t.kube.pods(install.mic_namespace, labels=install.mic_selector)
                    if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        nmi_pods = t.kube.pods(install.nmi_namespace, labels=install.nmi_selector)
        got = t.backend.health()
        mic = [b.strip() for c, _, b in got if c == "mic"]
        nmi = [b.strip() for c, _, b in got if c == "nmi"]
        ok = (len(mic) == len(mic_pods) and mic.count("Active") == 1 and mic.count("Not Active") == len(mic) - 1
              and len(nmi) == len(nmi_pods) > 0 and all(b == "Active" for b in nmi))
        return (ok, got, len(mic_pods), len(nmi_pods))
    state = {}

    def settled():
        state["last"] = probes()
        return state["last"][0]
    wait_for("one Active MIC, the other MICs Not Active, every NMI Active", settled, t.backend.patience,
             interval=1.0, describe=lambda: state.get("last"))
    _, got, m, n = state["last"]
    t.step(f"{m} MIC pods (one Active), {n} NMI pods Active: {got}")


@scenario("retry-after", identities=1)
def retry_after(t):
    """With --set-retry-after-header: 503 + Retry-After until assigned, then the token on retry."""
    t.check(t.install.set_retry_after_header,
            f"NMI runs without --set-retry-after-header (flags {t.install.nmi_flags}); install with "
            "--set nmi.setRetryAfterHeader=true (docs/install.md) or leave this scenario out with --skip")
    ident = t.identities[0]
    # The identity exists but nothing binds it yet: NMI cannot find it for this pod.
    t.kube.apply(azure_identity("identity", t.ns, ident))
    (pod,) = t.start_pods(t.validator("validator", "late"))
    ans = t.backend.token(pod, ident.client_id)
    t.check(ans.status == 503, f"before the binding: expected 503, got {ans.brief()}")
    after = ans.headers.get("retry-after", "")
    t.check(after.isdigit() and int(after) > 0, f"503 without a Retry-After in seconds: {ans.headers}")
    t.step(f"503 with Retry-After: {after}")
    t.kube.apply(binding("identity-binding", t.ns, "identity", "late"))
    t.step("bound the identity")
    deadline = time.monotonic() + t.backend.patience + 4 * int(after) + t.install.nmi_wait
    attempts = 1
    while True:
        time.sleep(int(after))
        attempts += 1
        ans = t.backend.token(pod, ident.client_id)
        if ans.status == 200:
            break
        t.check(ans.status == 503 and ans.headers.get("retry-after", "").isdigit(),
                f"retry {attempts}: expected 200 or 503 with Retry-After, got {ans.brief()}")
        after = ans.headers["retry-after"]
        t.check(time.monotonic() < deadline, f"no token after {attempts} attempts")
    t.step(f"token on attempt {attempts}, each after the Retry-After delay")
    t.expect_token(pod, ident)


@scenario("service-principal", needs_service_principal=True)
def service_principal(t):
    """A type-1 identity (service principal with a secret in a Secret): token as that principal."""
    sp = t.backend.given.service_principal
    t.kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sp-secret", "namespace": t.ns},
         "stringData": {"clientSecret": sp.secret}},
        {"apiVersion": API, "kind": "AzureIdentity", "metadata": {"name": "sp", "namespace": t.ns},
         "spec": {"type": 1, "tenantID": sp.tenant_id, "clientID": sp.client_id,
                  "clientPassword": {"name": "sp-secret", "namespace": t.ns}}},
        binding("sp-binding", t.ns, "sp", "sp"))
    (pod,) = t.start_pods(t.validator("validator", "sp"))
    t.wait_state("validator", "sp")
    try:
        t.expect_token(pod, client_id=sp.client_id)
    except Failed as e:
        raise Failed(f"{e} (NMI must be allowed to read Secrets: the chart's rbac.allowAccessToSecrets)") from e


def _metric_sum(text, name):
    """The sum of every sample of `name` in Prometheus text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@scenario("leader-change", identities=1, exclusive=True)
def leader_change(t):
    """Deleting the MIC leader's pod while a pod is being bound: the next leader assigns it."""
    install = t.install
    leader = t.backend.mic_leader()
    t.check(leader is not None, f"no holder of MIC's leader Lease {'/'.join(install.lease)}")
    t.check(t.kube.pod(install.mic_namespace, leader) is not None,
            f"the Lease's holder {leader!r} is not a MIC pod in {install.mic_namespace}")
    t.step(f"MIC leader is {leader}; deleting its pod")
    t.kube.kubectl("delete", "pod", leader, "-n", install.mic_namespace, "--wait=false")
    ident = t.identities[0]
    name = t.bind(ident, "validator", name="identity")
    (pod,) = t.start_pods(t.validator("validator", "validator"))
    t.wait_state("validator", name, timeout=install.lease_duration + t.backend.patience + 60)
    t.expect_token(pod, ident)
    holder = t.backend.mic_leader()
    t.check(holder is not None and holder != leader,
            f"the Lease is held by {holder!r} after its holder {leader}'s pod was deleted")
    holder_pod = t.kube.pod(install.mic_namespace, holder)
    t.check(holder_pod is not None and not holder_pod["metadata"].get("deletionTimestamp"),
            f"the new Lease holder {holder!r} is not a live MIC pod in {install.mic_namespace}")
    t.step(f"the Lease moved from {leader} to {holder}")
    # The new leader made the assignment: its own metrics count it.
    added = _metric_sum(t.backend.mic_metrics(holder), "aadpodidentity_assigned_identity_addition_count")
    t.check(added >= 1, f"the new leader {holder} counts {added} AzureAssignedIdentity additions, expected >= 1")
    t.step(f"{holder} counts {added:.0f} AzureAssignedIdentity addition(s)")

    def back_to_full():
        pods = [p for p in t.kube.pods(install.mic_namespace, labels=install.mic_selector)
                if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        return len(pods) == install.mic_replicas
    wait_for(f"{install.mic_replicas} MIC pods running again", back_to_full, t.backend.patience + 120)


ARM_THROTTLE_SECONDS = 4


def _compute_patches(requests, after_ms):
    """ARM PATCHes of VMs and scale sets after `after_ms`, oldest first."""
    return [r for r in requests if r["atMs"] > after_ms and r["method"] == "PATCH"
            and "/providers/microsoft.compute/" in r["path"].lower()]


@scenario("arm-retry-after", identities=1, exclusive=True)
def arm_retry_after(t):
    """ARM throttles MIC's scale-set write (429 + Retry-After): MIC waits that long, then assigns."""
    secs = ARM_THROTTLE_SECONDS
    before = t.backend.arm_requests()
    mark = before[-1]["atMs"] if before else -1.0
    t.backend.throttle_arm(secs)
    t.step(f"ARM will answer the next scale-set write 429 with Retry-After: {secs}")
    ident = t.identities[0]
    pod, name, _ = _single(t, ident)
    patches = _compute_patches(t.backend.arm_requests(), mark)
    t.check(patches and patches[0]["status"] == 429,
            f"expected MIC's first write to be throttled (429), saw {[(p['status'], p['path']) for p in patches]}")
    throttled_at = patches[0]["atMs"]
    early = [p for p in patches[1:] if p["atMs"] < throttled_at + secs * 1000]
    t.check(not early, f"MIC wrote again {[round(p['atMs'] - throttled_at) for p in early]} ms after a 429 "
                       f"with Retry-After: {secs}")
    ok = [p for p in patches[1:] if 200 <= p["status"] < 300]
    t.check(bool(ok), f"no successful write after the 429: {[(p['status'], round(p['atMs'])) for p in patches]}")
    waited = (ok[0]["atMs"] - throttled_at) / 1000
    t.step(f"429 at {throttled_at / 1000:.2f} s; next write {waited:.2f} s later ({ok[0]['status']}), "
           f"none in between")
    t.check(t.on_scale_set(pod["spec"]["nodeName"], ident), f"{ident.name} is not on the scale set after the wait")
    t.expect_token(pod, ident)


@scenario("cronjob-churn", identities=1)
def cronjob_churn(t):
    """A CronJob's pods, one run after another, each get the identity; each run's assignment goes."""
    ident = t.identities[0]
    name = t.bind(ident, "churn", name="identity")
    # On a cluster the job's container sleeps long enough to be asked for a token from inside.
    t.kube.apply({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "churn", "namespace": t.ns},
        "spec": {"schedule": "*/1 * * * *", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
                 "jobTemplate": {"spec": {"backoffLimit": 0, "template": {
                     "metadata": {"labels": {POD_LABEL: "churn", "app": "churn"}},
                     "spec": dict(t.pod_spec(command=["sleep", "40"]), restartPolicy="Never")}}}}})
    seen = []
    runs = 3
    while len(seen) < runs:
        def next_run():
            for p in t.kube.pods(t.ns, labels="app=churn"):
                n = p["metadata"]["name"]
                if n not in seen and (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP"):
                    return p
            return None
        pod = wait_for(f"run {len(seen) + 1} of the CronJob running", next_run, 150 + t.backend.patience)
        pname = pod["metadata"]["name"]
        seen.append(pname)
        t.step(f"run {len(seen)}: pod {pname}")
        t.wait_state(pname, name)
        t.expect_token(pod, ident)
    # A run's assignment goes when its pod finishes (Succeeded, or deleted with its old Job),
    # while the CronJob keeps running.
    for pname in seen[:-1]:
        t.wait_gone(pname, name, timeout=t.backend.patience + 120)
    # After the CronJob, none is left.
    t.kube.delete("cronjob", "churn", t.ns)
    t.kube.kubectl("delete", "jobs.batch", "--all", "-n", t.ns, "--wait=false")
    t.kube.kubectl("delete", "pods", "-l", "app=churn", "-n", t.ns, "--wait=false")
    t.wait_count(0)


def select(only=None, skip=None):
    names = [s.name for s in SCENARIOS]
    for n in (only or []) + (skip or []):
        if n not in names:
            raise ValueError(f"no scenario {n!r}; scenarios: {', '.join(names)}")
    chosen = [s for s in SCENARIOS if (not only or s.name in only) and s.name not in (skip or [])]
    return chosen

