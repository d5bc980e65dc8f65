#!/usr/bin/env python3
"""`loadtest/run burst --kubeconfig FILE --identity-file FILE`: the burst scenario on a real
cluster (kind or AKS with the chart installed).

N pods bound to K identities are created at once in a fresh namespace of the cluster; as soon
as a pod runs, a token for its identity is requested from inside it (`kubectl exec … curl`, as
an application in that pod would ask); the driver watches pods and AzureAssignedIdentities
through the API server. The report gives, per pod, the time from the pods' creation to
Running, to Assigned and to its token, the tokens answered 200, and MIC's ARM writes during the
run (the leader's `aadpodidentity_cloud_provider_operations_duration_seconds_count` for
`vmss_update` and `vm_update`, before and after). Times are as the driver observes them
(polling the API server every --poll seconds), so they carry that resolution.

It reuses the e2e suite's backends (e2e/aadpi_e2e): the same identity file, installation
discovery and in-pod requests. `--sandbox` runs the same driver against a sandbox started by
the e2e suite (requests then leave from the pods' loopback addresses), which is how CI checks it.

Exit codes: 0 every pod Assigned and answered 200 within the time limit, 1 otherwise, 2 when
the run cannot start. The report directory is printed last."""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "e2e"))

from aadpi_e2e import azure  # noqa: E402
from aadpi_e2e.backends import SandboxBackend, make_temp_dir, sandbox_binary  # noqa: E402
from aadpi_e2e.cli import add_backend_args, cluster_backend, load_given  # noqa: E402
from aadpi_e2e.config import ConfigError  # noqa: E402
from aadpi_e2e.context import POD_LABEL, azure_identity, binding, suffix  # noqa: E402
from aadpi_e2e.kube import KubeError, Timeout, wait_for  # noqa: E402

WRITES = re.compile(
    r'^aadpodidentity_cloud_provider_operations_duration_seconds_count\{[^}]*operation_type="(vmss_update|vm_update)"[^}]*\}\s+(\S+)',
    re.MULTILINE)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="loadtest/run burst", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["burst"], help="only burst runs against a real cluster")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--kubeconfig", metavar="FILE", help="the cluster (the chart installed)")
    where.add_argument("--sandbox", action="store_true", help="run this driver against a sandbox (CI)")
    p.add_argument("--pods", type=int, default=100, help="pods created at once (default %(default)s)")
    p.add_argument("--identities", type=int, default=5, help="identities they are bound to (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="token requests in flight (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds before the run gives up (default %(default)s)")
    p.add_argument("--poll", type=float, default=None, help="seconds between API reads (default 1 on a cluster, 0.25 in the sandbox)")
    p.add_argument("--out", metavar="DIR", help="report directory (default loadtest/reports/<time>-cluster-burst)")
    add_backend_args(p)
    args = p.parse_args(argv)
    if args.pods < 1 or args.identities < 1 or args.concurrency < 1:
        p.error("--pods, --identities and --concurrency must be at least 1")
    return args


def arm_writes(backend):
    """(leader pod, ARM writes so far) from the MIC leader's metrics, or (leader, None)."""
    leader = backend.mic_leader()
    if not leader:
        return None, None
    try:
        text = backend.mic_metrics(leader)
    except KubeError:
        return leader, None
    return leader, sum(float(v) for _, v in WRITES.findall(text))


def quantiles(xs):
    if not xs:
        return None
    xs = sorted(xs)

    def q(p):
        return round(xs[min(len(xs) - 1, max(0, int(round(p * len(xs) + 0.5)) - 1))], 3)
    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(xs[-1], 3), "n": len(xs)}


def run(args, backend, log):
    ids = backend.given.identities
    if args.identities > len(ids):
        raise ConfigError(f"--identities {args.identities}, but {len(ids)} are given")
    ids = ids[:args.identities]
    kube = backend.kube
    poll = args.poll or (0.25 if args.sandbox else 1.0)
    ns = f"loadtest-burst-{suffix()}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objects = []
    for k, ident in enumerate(ids):
        objects += [azure_identity(f"identity-{k}", ns, ident), binding(f"identity-{k}-binding", ns, f"identity-{k}", f"burst-{k}")]
    kube.apply(*objects)
    leader0, writes0 = arm_writes(backend)
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"burst-{j}", "namespace": ns, "labels": {POD_LABEL: f"burst-{j % len(ids)}", "app": "burst"}},
             "spec": {"terminationGracePeriodSeconds": 0,
                      "containers": [{"name": "validator", "image": backend.validator_image,
                                      "command": ["sleep", "86400"]}]}}
            for j in range(args.pods)]
    t0 = time.monotonic()
    kube.apply(*pods)
    log(f"{args.pods} pods created in {ns} ({len(ids)} identities)")
    running, assigned, tokens = {}, {}, {}
    lock = threading.Lock()

    def ask(pod):
        name = pod["metadata"]["name"]
        j = int(name.rsplit("-", 1)[1])
        ans = backend.token(pod, ids[j % len(ids)].client_id)
        with lock:
            tokens[name] = (time.monotonic() - t0, ans.status, "" if ans.status == 200 else ans.brief())

    deadline = t0 + args.time_limit
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            while True:
                now = time.monotonic() - t0
                for p in kube.pods(ns, labels="app=burst"):
                    n = p["metadata"]["name"]
                    if n not in running and (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP"):
                        running[n] = now
                        pool.submit(ask, p)
                for a in kube.assigned_identities():
                    s = a.get("spec") or {}
                    if s.get("podNamespace") == ns and (a.get("status") or {}).get("status") == "Assigned":
                        assigned.setdefault(s.get("pod"), now)
                with lock:
                    done = len(tokens)
                if (done == args.pods and len(assigned) == args.pods) or time.monotonic() > deadline:
                    break
                time.sleep(poll)
            if time.monotonic() > deadline:
                pool.shutdown(wait=False, cancel_futures=True)
        leader1, writes1 = arm_writes(backend)
    finally:
        kube.kubectl("delete", "pods,azureidentitybindings,azureidentities", "--all", "-n", ns, "--wait=false", check=False)
        try:
            wait_for("MIC to delete the run's AzureAssignedIdentities",
                     lambda: not [a for a in kube.assigned_identities()
                                  if (a.get("spec") or {}).get("podNamespace") == ns],
                     backend.patience + 120)
        except Timeout as e:
            log(f"cleanup: {e}")
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    ok = [t for t, status, _ in tokens.values() if status == 200]
    failures = sorted({err for _, status, err in tokens.values() if status != 200})[:5]
    writes = None
    if writes0 is not None and writes1 is not None and leader0 == leader1:
        writes = int(writes1 - writes0)
    return {
        "backend": backend.name,
        "namespace": ns,
        "pods": args.pods,
        "identities": len(ids),
        "poll_seconds": poll,
        "created_to_running_s": quantiles(list(running.values())),
        "created_to_assigned_s": quantiles([assigned[p] for p in assigned]),
        "created_to_token_s": quantiles(ok),
        "running": len(running),
        "assigned": len(assigned),
        "tokens_ok": len(ok),
        "tokens_failed": len(tokens) - len(ok),
        "tokens_unanswered": args.pods - len(tokens),
        "failures": failures,
        "arm_writes": writes,
        "arm_writes_note": None if writes is not None else
        "not measured (MIC's leader changed during the run, or its /metrics could not be read)",
    }


def table(r):
    def q(d):
        return "-" if not d else f"p50 {d['p50']:.2f} s, p95 {d['p95']:.2f} s, p99 {d['p99']:.2f} s, max {d['max']:.2f} s"
    return "\n".join([
        f"burst on the {r['backend']}: {r['pods']} pods, {r['identities']} identities (API polled every {r['poll_seconds']} s)",
        f"  created -> Running:  {q(r['created_to_running_s'])}",
        f"  created -> Assigned: {q(r['created_to_assigned_s'])} ({r['assigned']}/{r['pods']})",
        f"  created -> token:    {q(r['created_to_token_s'])} ({r['tokens_ok']}/{r['pods']} answered 200)",
        f"  ARM writes by MIC:   {r['arm_writes'] if r['arm_writes'] is not None else r['arm_writes_note']}",
    ] + [f"  failure: {f}" for f in r["failures"]])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or os.path.join(ROOT, "loadtest", "reports", time.strftime("%Y%m%d-%H%M%S") + "-cluster-burst")
    os.makedirs(out, exist_ok=True)
    work = make_temp_dir()
    log_file = open(os.path.join(out, "driver.log"), "a")

    def log(msg):
        log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log_file.flush()
        print(msg, file=sys.stderr, flush=True)
    backend = None
    try:
        if args.kubeconfig:
            backend = cluster_backend(args, load_given(args), log)
        else:
            backend = SandboxBackend(sandbox_binary(args.sandbox_bin), work, log)
        result = run(args, backend, log)
    except (ConfigError, KubeError, azure.AzureError) as e:
        print(f"loadtest/run: {e}", file=sys.stderr)
        return 2
    finally:
        if backend is not None:
            backend.close()
        log_file.close()
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(table(result))
    passed = result["assigned"] == result["pods"] and result["tokens_ok"] == result["pods"]
    print("PASS" if passed else "FAIL")
    print(out)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
