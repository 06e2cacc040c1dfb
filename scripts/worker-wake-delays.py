#!/usr/bin/env python3
"""How long a woken thread (podrouterd's worker) waited for its CPU, and what
held the CPU when it was woken.

Reads the text of `perf script -F comm,tid,cpu,time,event,trace` over a trace
with sched:sched_waking and sched:sched_switch (README "The p99.9 stall,
found" has the whole recipe):

    perf record -a -e sched:sched_waking -e sched:sched_switch -o w.perf -- CMD
    perf script -i w.perf -F comm,tid,cpu,time,event,trace > w.txt
    scripts/worker-wake-delays.py w.txt WORKER_TID [CPU] [MIN_WAKEUPS_PER_100MS]

Only wake-ups in 100 ms windows with at least MIN_WAKEUPS_PER_100MS (default
150) wake-ups of the thread count: the measured runs, not setup or the other
plane's runs. Prints, per task that was running on CPU when the thread was
woken, how many wake-ups found it there and how long they waited (wake-up to
switch-in), then the totals of waits of 1 ms and more with the CPU idle
(the wake-up had to bring an idle CPU back: an IPI) or busy (the thread
waited for the task running there).
"""
import collections
import re
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def main():
    path, tid = sys.argv[1], sys.argv[2]
    cpu = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    min_rate = int(sys.argv[4]) if len(sys.argv) > 4 else 150
    events = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                events.append((float(m.group(4)), int(m.group(3)), m.group(5), m.group(6)))
    woken = f"pid={tid} "
    per_window = collections.Counter(
        int(t * 10) for t, _, name, rest in events if name == "sched:sched_waking" and woken in rest
    )
    measured = {w for w, n in per_window.items() if n >= min_rate}
    running, pending, waits = None, None, []
    for t, c, name, rest in events:
        if name == "sched:sched_waking" and woken in rest:
            pending = (t, running)
        elif c == cpu and name == "sched:sched_switch":
            if pending and f"next_pid={tid} " in rest:
                if int(pending[0] * 10) in measured:
                    waits.append(((t - pending[0]) * 1e3, pending[1] or "?"))
                pending = None
            running = rest.split("next_comm=")[1].split(" next_pid")[0]
    by_task = collections.defaultdict(list)
    for ms, task in waits:
        by_task[re.sub(r"[:/]\d.*", "", task)].append(ms)
    print(f"wake-ups of {tid} in the measured windows: {len(waits)}")
    for task, v in sorted(by_task.items(), key=lambda kv: -sum(x >= 0.5 for x in kv[1]))[:15]:
        v.sort()
        print(
            f"  {task:18} n {len(v):6}  wait p50 {v[len(v) // 2]:.3f}  max {v[-1]:.3f} ms"
            f"  >=1 ms {sum(x >= 1 for x in v)}"
        )
    idle = [ms for ms, task in waits if task.startswith("swapper")]
    busy = [ms for ms, task in waits if not task.startswith("swapper")]
    print(
        f"waits >= 1 ms: CPU {cpu} idle {sum(x >= 1 for x in idle)}, another task running "
        f"{sum(x >= 1 for x in busy)}; >= 3 ms: idle {sum(x >= 3 for x in idle)}, "
        f"another task {sum(x >= 3 for x in busy)}"
    )


if __name__ == "__main__":
    main()
