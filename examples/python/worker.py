#!/usr/bin/env python3
"""A worker that follows lastcall's sidecar, with Python's standard library
only (Python 3.9 or later).

It takes one job at a time and stops taking jobs the moment its pod starts
draining (a node notice, or the pod being deleted); it finishes the job in
hand if the rest of the work fits before the deadline, hands it back
otherwise, and tells the sidecar it is done. Copy the Sidecar and
DrainWatcher classes; replace take/work/finish/hand_back with your queue's
pull, ack and nack (Pub/Sub: nack; SQS: ChangeMessageVisibility to 0;
RabbitMQ: basic_nack with requeue).

Here a job is a file in a spool directory whose content is its cost in
seconds; taking it moves it to work/, finishing to finished/, handing back
moves it back.

Environment:
  LASTCALL_ADDR  the sidecar's workers' API (default 127.0.0.1:10575)
  JOBS           the spool directory (default /jobs)
"""
import datetime
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

MARGIN = 2.0  # seconds kept for handing back before the deadline


class Sidecar:
    """The sidecar's workers' API (see sidecar/openapi.yaml)."""

    def __init__(self, addr):
        self.base = "http://" + addr

    def state(self, generation=None, wait=30):
        """The state now, or, given the generation last seen, when it
        changes (at most wait seconds)."""
        url = self.base + "/v1/state"
        if generation is not None:
            url += "?generation=%d&wait=%ds" % (generation, wait)
        with urllib.request.urlopen(url, timeout=wait + 10) as resp:
            return json.load(resp)

    def _post(self, path):
        req = urllib.request.Request(self.base + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def done(self):
        """The pod's workers finished or handed back all they held."""
        self._post("/v1/done")

    def inflight(self, n):
        """How many messages the workers hold now (optional)."""
        self._post("/v1/inflight?count=%d" % n)


def parse_deadline(state):
    """The deadline as an aware datetime, or None. fromisoformat reads the
    sidecar's format (2026-12-02T01:13:29.120+00:00) from Python 3.9 on."""
    d = state.get("deadline")
    return datetime.datetime.fromisoformat(d) if d else None


class DrainWatcher(threading.Thread):
    """Holds a long-poll to the sidecar in the background; draining is set
    once the pod drains. If the sidecar cannot be reached the worker keeps
    working (fail open) and the watcher retries with backoff."""

    def __init__(self, sidecar):
        super().__init__(daemon=True)
        self.sidecar = sidecar
        self.draining = threading.Event()
        self.state = {}

    def run(self):
        generation, backoff = None, 0.05
        while True:
            try:
                st = self.sidecar.state(generation)
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            generation = st["generation"]
            if st["phase"] == "draining":
                self.state = st
                self.draining.set()
                return

    def seconds_left(self):
        deadline = parse_deadline(self.state)
        if deadline is None:
            return float("inf")
        return (deadline - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def say(*words):
    print(*words, flush=True)


def take(jobs):
    """Claims the first job, or returns None."""
    for name in sorted(os.listdir(jobs)):
        src = os.path.join(jobs, name)
        if not os.path.isfile(src):
            continue
        try:
            os.rename(src, os.path.join(jobs, "work", name))
        except FileNotFoundError:
            continue  # another worker took it
        return name
    return None


def main():
    sidecar = Sidecar(os.environ.get("LASTCALL_ADDR", "127.0.0.1:10575"))
    jobs = os.environ.get("JOBS", "/jobs")
    for d in ("work", "finished"):
        os.makedirs(os.path.join(jobs, d), exist_ok=True)
    watcher = DrainWatcher(sidecar)
    watcher.start()
    say("ready")

    while not watcher.draining.is_set():
        name = take(jobs)
        if name is None:
            watcher.draining.wait(0.1)  # idle: no spinning
            continue
        say("took", name)
        path = os.path.join(jobs, "work", name)
        with open(path) as f:
            left = float(f.read().strip() or 0)
        handed_back = False
        while left > 0:
            # Once draining, finish only if the rest fits before the deadline.
            if watcher.draining.is_set() and left > watcher.seconds_left() - MARGIN:
                os.rename(path, os.path.join(jobs, name))
                say("handed back", name)
                handed_back = True
                break
            step = min(left, 0.05)
            time.sleep(step)  # the work
            left -= step
        if not handed_back:
            os.rename(path, os.path.join(jobs, "finished", name))
            say("finished", name)

    sidecar.done()
    deadline = parse_deadline(watcher.state)
    say("drained:", watcher.state.get("reason"), "deadline", deadline.isoformat() if deadline else "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
