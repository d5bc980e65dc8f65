#!/usr/bin/env python3
"""CPU seconds of a load-test run's processes, by component, and of the whole machine.

    loadtest/cpu_sampler.py OUT.jsonl -- loadtest/run burst [flags]

Runs the command and, every 0.2 s until it ends, appends one JSON line to OUT.jsonl: the time,
the 1-minute load average, the CPU seconds used since the start by the command's process tree
grouped by component (prometheus, driver+sims, mic, nmi, other:<name>), and `machine_busy`, the
CPU seconds the whole machine spent busy (every process, also other users'). Differences of
consecutive lines show who had the cores at each moment (docs/performance.md, the wake-up).
Reads /proc only; exits with the command's status.
"""
import json
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def component(pid):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return None
    if not argv or not argv[0]:
        return None
    exe = os.path.basename(argv[0].decode(errors="replace"))
    sub = argv[1].decode(errors="replace") if len(argv) > 1 else ""
    if exe == "prometheus":
        return "prometheus"
    if exe == "aad-pod-identity-sandbox":
        return "driver+sims"
    if exe == "aad-pod-identity" and sub in ("mic", "nmi"):
        return sub
    return "other:" + exe


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / HZ


def tree(root):
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            ppid = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        children.setdefault(ppid, []).append(p)
    out, todo = [], [str(root)]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def machine_busy():
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / HZ  # all but idle and iowait


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = open(sys.argv[1], "w")
    child = subprocess.Popen(sys.argv[3:])
    first, last = {}, {}
    busy0 = machine_busy()
    while True:
        done = child.poll() is not None
        for pid in tree(child.pid):
            c, v = component(pid), cpu_seconds(pid)
            if c is None or v is None:
                continue
            first.setdefault(pid, 0.0)  # every process of the tree started after us
            last[pid] = (c, v)
        totals = {}
        for pid, (c, v) in last.items():
            totals[c] = round(totals.get(c, 0.0) + v - first[pid], 2)
        totals["machine_busy"] = round(machine_busy() - busy0, 2)
        load = open("/proc/loadavg").read().split()[0]
        out.write(json.dumps({"t": time.time(), "load1": load, "cpu": totals}) + "\n")
        out.flush()
        if done:
            return child.returncode
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
