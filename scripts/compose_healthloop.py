"""Run podman healthchecks where no systemd schedules them (started by scripts/compose-engine.sh).

Podman hands each container's healthcheck to a systemd timer; without systemd nothing runs the
checks, every container stays ``starting`` and ``depends_on: condition: service_healthy`` waits
forever. This loop plays the timer: each running container with a healthcheck gets
``podman healthcheck run`` once per its own interval (not faster: retries are counted per run,
so a loop that ignored the interval would use them up before ``start_period`` is over). Standard
library only, so the system ``python3`` runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

DEFAULT_INTERVAL_S = 30.0  # podman's own default when a healthcheck gives none
TICK_S = 1.0


def running_ids() -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "-q", "--no-trunc"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.split() if done.returncode == 0 else []


def interval_s(container_id: str) -> float | None:
    """The healthcheck interval in seconds, or None when the container has no healthcheck."""
    done = subprocess.run(
        ["podman", "inspect", "--format", "{{json .Config.Healthcheck}}", container_id],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return None
    check = json.loads(done.stdout or "null")
    if not check or not check.get("Test") or check["Test"][0] == "NONE":
        return None
    interval_ns = check.get("Interval") or 0
    return interval_ns / 1e9 if interval_ns > 0 else DEFAULT_INTERVAL_S


def main() -> int:
    intervals: dict[str, float | None] = {}
    due: dict[str, float] = {}
    checks: dict[str, subprocess.Popen[bytes]] = {}
    while True:
        now = time.monotonic()
        ids = running_ids()
        for cid in ids:
            if cid not in intervals:
                intervals[cid] = interval_s(cid)
                due[cid] = now  # the first check right away, as podman's timer does
            every = intervals[cid]
            if every is None or now < due[cid] or (cid in checks and checks[cid].poll() is None):
                continue  # no check, not due, or the last one still running (its timeout)
            due[cid] = now + every
            checks[cid] = subprocess.Popen(
                ["podman", "healthcheck", "run", cid],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for gone in set(intervals) - set(ids):
            intervals.pop(gone, None)
            due.pop(gone, None)
        for cid in [c for c, p in checks.items() if p.poll() is not None and c not in intervals]:
            del checks[cid]  # reaped above by poll(); forget containers that are gone
        time.sleep(TICK_S)


if __name__ == "__main__":
    sys.exit(main())
