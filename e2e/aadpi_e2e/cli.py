"""`e2e/run`: choose a backend, check that it has what the chosen scenarios need, run them
(independent ones side by side, exclusive ones alone), print the table, exit non-zero on any
failure. Exit codes: 0 all passed, 1 a scenario failed, 2 the suite could not run as asked."""

import argparse
import concurrent.futures
import os
import shutil
import sys
import threading
import time
import traceback

from . import azure
from .backends import ClusterBackend, SandboxBackend, make_temp_dir, sandbox_binary
from .config import ConfigError, load_identity_file
from .context import Failed, Skipped, Test
from .kube import KubeError, Timeout
from .scenarios import SCENARIOS, select

USAGE_HINT = "see e2e/README.md"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="e2e/run",
        description="The end-to-end suite of AAD Pod Identity, against the sandbox or a real cluster.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--sandbox", action="store_true",
                       help="start a sandbox (simulated Kubernetes and Azure) and run against it")
    where.add_argument("--kubeconfig", metavar="FILE",
                       help="run against the cluster of this kubeconfig (kind or AKS), where the chart is installed")
    add_backend_args(p)
    p.add_argument("--sandbox-arg", action="append", default=[], metavar="FLAG",
                   help="sandbox mode: one more flag of the sandbox, replacing the suite's own for the same "
                        "setting, e.g. --sandbox-arg=--faults=flaky or "
                        "--sandbox-arg=--nmi-arg=--block-instance-metadata=false (repeatable)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="scenarios run side by side (default 4 in the sandbox, 1 on a cluster)")
    p.add_argument("--only", metavar="A,B", help="run only these scenarios")
    p.add_argument("--skip", metavar="A,B", help="leave these scenarios out (they are listed as SKIP)")
    p.add_argument("--list", action="store_true", help="list the scenarios and what each needs")
    p.add_argument("--check", action="store_true",
                   help="only check the backend: installation found, flags, nodes, identities, ARM access")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, sandbox output)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step as it happens")
    args = p.parse_args(argv)
    if not args.list and not (args.sandbox or args.kubeconfig):
        p.error("one of --sandbox or --kubeconfig FILE is required")
    return args


def add_backend_args(p):
    """The options that say how to reach either backend (shared with loadtest/cluster.py)."""
    p.add_argument("--identity-file", metavar="FILE", default=os.environ.get("E2E_IDENTITY_FILE"),
                   help="cluster mode: the Azure identities and service principal to use "
                        "(env E2E_IDENTITY_FILE; format in e2e/README.md)")
    p.add_argument("--system-namespace", metavar="NS",
                   help="cluster mode: namespace of MIC and NMI (default: found by their labels)")
    p.add_argument("--validator-image", metavar="IMAGE",
                   help="cluster mode: image of the pods tokens are requested from; needs curl and sleep "
                        "(default curlimages/curl:latest)")
    p.add_argument("--arm-endpoint", default=azure.PUBLIC_ARM, metavar="URL",
                   help="cluster mode: Azure Resource Manager (default %(default)s)")
    p.add_argument("--aad-endpoint", default=azure.PUBLIC_AUTHORITY, metavar="URL",
                   help="cluster mode: Azure AD authority (default %(default)s)")
    p.add_argument("--sandbox-bin", metavar="PATH",
                   help="sandbox mode: the aad-pod-identity-sandbox binary (default $AAD_POD_IDENTITY_SANDBOX_BIN, "
                        "else target/debug, built if missing)")


def load_given(args):
    """The identity file a real cluster needs, or a ConfigError saying so."""
    if not args.identity_file:
        raise ConfigError("a real cluster needs Azure identities: --identity-file FILE (or E2E_IDENTITY_FILE) "
                          f"naming user-assigned identities and a service principal ({USAGE_HINT})")
    return load_identity_file(args.identity_file)


def cluster_backend(args, given, log):
    return ClusterBackend(args.kubeconfig, given, log, namespace=args.system_namespace,
                          validator_image=args.validator_image,
                          arm_endpoint=args.arm_endpoint, authority=args.aad_endpoint)


def split(s):
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def allocate(chosen, identities, jobs):
    """Identities per scenario: disjoint when scenarios run side by side (so one scenario's
    scale-set checks never see another's), reused one scenario after another otherwise."""
    need = sum(s.identities for s in chosen)
    widest = max((s.identities for s in chosen), default=0)
    if jobs > 1 and need > len(identities):
        raise ConfigError(f"{len(identities)} identities given, but {len(chosen)} scenarios side by side need "
                          f"{need} distinct ones; give more or run with --jobs 1 (needs {widest})")
    if widest > len(identities):
        who = ", ".join(f"{s.name} needs {s.identities}" for s in sorted(chosen, key=lambda s: -s.identities)
                        if s.identities > len(identities))
        raise ConfigError(f"{len(identities)} identities given, but {who}; add identities to the identity file "
                          f"or leave those scenarios out with --skip ({USAGE_HINT})")
    out, at = {}, 0
    for s in chosen:
        if jobs > 1:
            out[s.name] = identities[at:at + s.identities]
            at += s.identities
        else:
            out[s.name] = identities[:s.identities]
    return out


def check_needs(chosen, given):
    """What the chosen scenarios need that the given configuration lacks, all at once."""
    missing = []
    if given.service_principal is None:
        sp = [s.name for s in chosen if s.needs_service_principal]
        arm = [s.name for s in chosen if s.needs_arm]
        if sp:
            missing.append(f"a service principal with a secret (servicePrincipal), for {', '.join(sp)}")
        if arm:
            missing.append("a service principal that may read the nodes' scale sets (servicePrincipal, "
                           f"role Reader on the node resource group), for {', '.join(arm)}")
    return missing


class Log:
    def __init__(self, path, verbose):
        self.f = open(path, "a")
        self.verbose = verbose
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, msg):
        line = f"{time.monotonic() - self.t0:8.2f}  {msg}"
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()
            if self.verbose:
                print(line, flush=True)


def run_one(s, backend, identities, log):
    started = time.monotonic()
    t = None
    error = None
    skipped = None
    try:
        t = Test(s.name, backend, identities, log)
        s.run(t)
    except Skipped as e:
        skipped = str(e)
    except (Failed, Timeout, KubeError, ConfigError, azure.AzureError) as e:
        error = str(e)
    except Exception as e:  # a defect of the suite itself: say where
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    if t is not None:
        try:
            t.cleanup()
        except (Timeout, KubeError) as e:
            error = (error + "; " if error else "") + f"cleanup: {e}"
    result = "FAIL" if error else "SKIP" if skipped else "PASS"
    log(f"[{s.name}] {result}{': ' + (error or skipped) if error or skipped else ''}")
    return {"name": s.name, "result": result, "seconds": time.monotonic() - started,
            "error": error, "reason": skipped, "steps": t.steps if t else []}


def preflight(backend):
    i = backend.install
    print(f"MIC: Deployment in {i.mic_namespace} ({i.mic_selector}), {i.mic_replicas} replicas, "
          f"lease {i.lease[0]}/{i.lease[1]} ({i.lease_duration:.0f} s), unassign grace {i.unassign_grace:.0f} s, "
          f"namespaced={i.mic_namespaced}")
    print(f"MIC leader: {backend.mic_leader() or 'none'}")
    print(f"NMI: DaemonSet in {i.nmi_namespace} ({i.nmi_selector}); block-instance-metadata="
          f"{i.block_instance_metadata}, set-retry-after-header={i.set_retry_after_header}, "
          f"longest wait {i.nmi_wait:.0f} s, namespaced={i.nmi_namespaced}")
    nodes = backend.kube.nodes()
    computes = {}
    for n in nodes:
        cid = azure.compute_id((n.get("spec") or {}).get("providerID"))
        computes.setdefault(cid, []).append(n["metadata"]["name"])
    for cid, names in computes.items():
        print(f"nodes {', '.join(sorted(names))}: {cid or 'not an Azure VM'}")
    g = backend.given
    print(f"identities: {len(g.identities)} ({', '.join(x.name for x in g.identities)})")
    print(f"service principal: {g.service_principal.client_id if g.service_principal else 'none'}")
    if backend.arm is not None:
        for cid in computes:
            if cid:
                ids = backend.arm.user_assigned(cid)
                print(f"ARM: {cid} carries {len(ids)} user-assigned identities")
                break


def table(results, total, backend_name):
    width = max([len(r["name"]) for r in results] + [8])
    lines = [f"{'scenario':<{width}}  result  time"]
    for r in results:
        t = "" if r["result"] == "SKIP" else f"{r['seconds']:6.1f} s"
        why = f"  ({r['reason']})" if r.get("reason") else ""
        lines.append(f"{r['name']:<{width}}  {r['result']:<6}  {t}{why}")
    passed = sum(r["result"] == "PASS" for r in results)
    failed = sum(r["result"] == "FAIL" for r in results)
    skipped = sum(r["result"] == "SKIP" for r in results)
    lines.append(f"{len(results)} scenarios on the {backend_name}: {passed} passed, {failed} failed"
                 f"{f', {skipped} skipped' if skipped else ''}; {total:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        chosen = select(split(args.only), split(args.skip))
    except ValueError as e:
        print(f"e2e/run: {e}", file=sys.stderr)
        return 2
    if args.list:
        for s in SCENARIOS:
            needs = []
            if s.identities:
                needs.append(f"{s.identities} identit{'y' if s.identities == 1 else 'ies'}")
            if s.needs_service_principal or s.needs_arm:
                needs.append("service principal")
            if s.exclusive:
                needs.append("runs alone")
            print(f"{s.name:28} {s.about}{'  [' + ', '.join(needs) + ']' if needs else ''}")
        return 0
    skipped = [s.name for s in SCENARIOS if s not in chosen and split(args.skip) and s.name in split(args.skip)]
    jobs = args.jobs or (4 if args.sandbox else 1)
    work = make_temp_dir()
    log = Log(os.path.join(work, "e2e.log"), args.verbose)
    backend = None
    keep = args.keep
    started = time.monotonic()
    try:
        if args.kubeconfig:
            given = load_given(args)
            missing = check_needs(chosen, given)
            if missing:
                raise ConfigError("the identity file lacks " + "; ".join(missing) +
                                  f" ({USAGE_HINT}; --skip leaves scenarios out)")
            allocation = allocate(chosen, given.identities, jobs)
            backend = cluster_backend(args, given, log)
        else:
            print(f"starting a sandbox (work directory {work})", flush=True)
            backend = SandboxBackend(sandbox_binary(args.sandbox_bin), work, log, args.sandbox_arg)
            missing = check_needs(chosen, backend.given)
            if missing:
                raise ConfigError("the sandbox lacks " + "; ".join(missing))
            allocation = allocate(chosen, backend.given.identities, jobs)
        if args.check:
            preflight(backend)
            return 0
        results = {}
        shared = [s for s in chosen if not s.exclusive]
        alone = [s for s in chosen if s.exclusive]

        def report(r):
            results[r["name"]] = r
            print(f"[{r['result']}] {r['name']} ({r['seconds']:.1f} s)", flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, s, backend, allocation[s.name], log) for s in shared]
            for f in concurrent.futures.as_completed(futures):
                report(f.result())
        for s in alone:
            report(run_one(s, backend, allocation[s.name], log))
        ordered = [results[s.name] for s in chosen if s.name in results]
        ordered += [{"name": n, "result": "SKIP", "seconds": 0.0, "reason": "--skip"} for n in skipped]
        total = time.monotonic() - started
        print()
        print(table(ordered, total, backend.name))
        failed = [r for r in ordered if r["result"] == "FAIL"]
        keep = keep or bool(failed)
        for r in failed:
            print(f"\n--- {r['name']}: {r['error']}")
            for line in r["steps"][-20:]:
                print(f"    {line}")
        if keep:
            print(f"\nlogs: {work}")
        return 1 if failed else 0
    except (ConfigError, KubeError, azure.AzureError) as e:
        print(f"e2e/run: {e}", file=sys.stderr)
        return 2
    finally:
        if backend is not None:
            backend.close()
        log.f.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
