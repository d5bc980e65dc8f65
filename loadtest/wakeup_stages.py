#!/usr/bin/env python3
"""Where each pod's wake-up (driver sees `Assigned` -> driver has the token) went, by stage.

    loadtest/wakeup_stages.py REPORT_DIR [--slowest FRACTION]

REPORT_DIR is a `burst` report of a run with the NMIs' debug events on
(`COMPONENT_LOG=warn,aad_pod_identity::actors::nmi=debug loadtest/run burst ...`). Reads
`pods.csv`, `imds.csv`, `report.json` (`t0_unix_s` puts the NMIs' log timestamps on the
driver's clock) and `components/nmi-*.log`, and prints, in milliseconds, per stage:
  skew    NMI's watch applies `Assigned` minus the driver's watch sees it (negative: NMI first)
  wake    from then until the waiting request runs again
  fetch   the token (0 when cached), split for a fetch into NMI -> metadata handler
          (to_imds), the handler (imds) and back (from_imds)
  answer  NMI has the token -> the driver has the answer
the quantiles over all pods, then the slowest pods one per line. Standard library only.
"""
import argparse
import collections
import csv
import datetime
import glob
import json
import os
import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--slowest", type=float, default=0.02, help="fraction of pods to list (0.02)")
    a = ap.parse_args()
    d = a.report
    t0 = json.load(open(os.path.join(d, "report.json")))["figures"]["t0_unix_s"]

    def at(line):
        stamp = line.split(" ", 1)[0]
        dt = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
        return dt.replace(tzinfo=datetime.timezone.utc).timestamp() - t0

    event, ready, fetches = {}, {}, []
    for path in glob.glob(os.path.join(d, "components", "nmi-*.log")):
        node = os.path.basename(path)[len("nmi-"):-len(".log")]
        for line in open(path, errors="replace"):
            line = ANSI.sub("", line)
            f = dict(FIELD.findall(line))
            if "assignment event" in line and "Assigned" in f.get("state", ""):
                event.setdefault(f["pod"].split("/", 1)[1], at(line))
            elif "woken by assignment" in line:
                t = at(line)
                ready[f["pod"].split("/", 1)[1]] = (t - float(f["fetch_ms"]) / 1e3, t, f["lookup"])
            elif "upstream token fetch" in line:
                t = at(line)
                fetches.append((node, f["identity"].rsplit("/", 1)[-1], t - float(f["fetch_ms"]) / 1e3, t))
    imds = collections.defaultdict(list)
    for r in csv.DictReader(open(os.path.join(d, "imds.csv"))):
        imds[(r["node"], r["client_id"])].append((float(r["received_s"]), float(r["answered_s"])))
    rows = []
    for r in csv.DictReader(open(os.path.join(d, "pods.csv"))):
        p = r["pod"]
        if p.startswith("unbound") or not r["assigned_s"] or not r["first_answer_s"] or p not in ready:
            continue
        assigned, answered = float(r["assigned_s"]), float(r["first_answer_s"])
        woken, done, lookup = ready[p]
        x = {"pod": p, "measure": max(0.0, answered - assigned) * 1e3, "at": assigned,
             "skew": None, "wake": None, "fetch": (done - woken) * 1e3,
             "answer": (answered - done) * 1e3, "lookup": lookup,
             "to_imds": None, "imds": None, "from_imds": None}
        if p in event:
            x["skew"] = (event[p] - assigned) * 1e3
            x["wake"] = (woken - event[p]) * 1e3
        # The fetch this pod waited for: its node's, ending as the pod's token was ready.
        mine = [f for f in fetches if f[0] == r["node"] and woken - 1e-4 <= f[3] <= done + 1e-4]
        if "Miss" in lookup and mine:
            f = max(mine, key=lambda f: f[3])
            hits = [h for h in imds[(r["node"], f[1])] if f[2] - 0.002 <= h[0] <= f[3] + 0.001]
            if hits:
                x["to_imds"] = (hits[0][0] - f[2]) * 1e3
                x["imds"] = (hits[0][1] - hits[0][0]) * 1e3
                x["from_imds"] = (f[3] - hits[0][1]) * 1e3
        rows.append(x)
    if not rows:
        raise SystemExit("no pod with NMI debug events: run with COMPONENT_LOG=warn,aad_pod_identity::actors::nmi=debug")
    rows.sort(key=lambda x: x["measure"])

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(p * len(v)))]

    m = [x["measure"] for x in rows]
    print(f"{len(rows)} pods; wake-up p50 {q(m, .5):.1f}, p99 {q(m, .99):.1f}, max {m[-1]:.1f} ms")
    for k in ["skew", "wake", "fetch", "answer", "to_imds", "imds", "from_imds"]:
        v = [x[k] for x in rows if x[k] is not None]
        if v:
            print(f"  {k:9s} p50 {q(v, .5):7.2f}  p90 {q(v, .9):7.2f}  p99 {q(v, .99):7.2f}  max {max(v):7.2f}  (n={len(v)})")
    n = max(1, round(len(rows) * a.slowest))
    fmt = lambda v: "     -" if v is None else f"{v:6.1f}"
    print(f"slowest {n}:  pod  measure | skew  wake fetch answer | to_imds imds from_imds | assigned_s lookup")
    for x in rows[-n:]:
        print(f"  {x['pod']:10s} {x['measure']:6.1f} |{fmt(x['skew'])}{fmt(x['wake'])}{fmt(x['fetch'])}{fmt(x['answer'])} |"
              f"{fmt(x['to_imds'])}{fmt(x['imds'])}{fmt(x['from_imds'])} | {x['at']:.4f} {x['lookup']}")
    for k in ["skew", "wake", "fetch", "answer"]:
        v = [x[k] for x in rows[-n:] if x[k] is not None]
        if v:
            print(f"  slowest mean {k}: {sum(v) / len(v):.1f} ms")


if __name__ == "__main__":
    main()
