#!/usr/bin/env node
// A worker that follows lastcall's sidecar, with Node.js alone (18 or
// later: global fetch; no dependencies).
//
// It takes one job at a time and stops taking jobs the moment its pod
// starts draining (a node notice, or the pod being deleted); it finishes the
// job in hand if the rest of the work fits before the deadline, hands it
// back otherwise, and tells the sidecar it is done. Copy the Sidecar class
// and watchDrain; replace take/work/finish/handBack with your queue's pull,
// ack and nack (Pub/Sub: nack; SQS: ChangeMessageVisibility to 0; RabbitMQ:
// nack with requeue).
//
// Here a job is a file in a spool directory whose content is its cost in
// seconds; taking it moves it to work/, finishing to finished/, handing
// back moves it back.
//
// Environment:
//   LASTCALL_ADDR  the sidecar's workers' API (default 127.0.0.1:10575)
//   JOBS           the spool directory (default /jobs)
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const MARGIN_MS = 2000; // kept for handing back before the deadline

// The sidecar's workers' API (see sidecar/openapi.yaml).
class Sidecar {
  constructor(addr) {
    this.base = `http://${addr}`;
  }

  // The state now, or, given the generation last seen, when it changes (at
  // most wait seconds).
  async state(generation, wait = 30) {
    let url = `${this.base}/v1/state`;
    if (generation !== undefined) url += `?generation=${generation}&wait=${wait}s`;
    const resp = await fetch(url, { signal: AbortSignal.timeout((wait + 10) * 1000) });
    if (!resp.ok) throw new Error(`sidecar: ${resp.status} ${await resp.text()}`);
    return resp.json();
  }

  async post(p) {
    const resp = await fetch(this.base + p, { method: 'POST', signal: AbortSignal.timeout(10000) });
    if (!resp.ok) throw new Error(`sidecar ${p}: ${resp.status} ${await resp.text()}`);
  }

  // The pod's workers finished or handed back all they held.
  done() { return this.post('/v1/done'); }

  // How many messages the workers hold now (optional).
  inflight(n) { return this.post(`/v1/inflight?count=${n}`); }
}

// The deadline in milliseconds since the epoch, or Infinity. Date reads the
// sidecar's format (2026-12-02T01:13:29.120+00:00).
function deadlineOf(state) {
  return state.deadline ? new Date(state.deadline).getTime() : Infinity;
}

// Holds a long-poll to the sidecar in the background; drain.draining turns
// true once the pod drains. If the sidecar cannot be reached the worker
// keeps working (fail open) and the watcher retries with backoff.
function watchDrain(sidecar) {
  const drain = { draining: false, state: {} };
  (async () => {
    let generation;
    let backoff = 50;
    for (;;) {
      let st;
      try {
        st = await sidecar.state(generation);
      } catch {
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 1000);
        continue;
      }
      backoff = 50;
      generation = st.generation;
      if (st.phase === 'draining') {
        drain.state = st;
        drain.draining = true;
        return;
      }
    }
  })();
  return drain;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const say = (...words) => process.stdout.write(words.join(' ') + '\n');

// Claims the first job, or returns null.
function take(jobs) {
  for (const name of fs.readdirSync(jobs).sort()) {
    const src = path.join(jobs, name);
    if (!fs.statSync(src, { throwIfNoEntry: false })?.isFile()) continue;
    try {
      fs.renameSync(src, path.join(jobs, 'work', name));
    } catch {
      continue; // another worker took it
    }
    return name;
  }
  return null;
}

async function main() {
  const sidecar = new Sidecar(process.env.LASTCALL_ADDR || '127.0.0.1:10575');
  const jobs = process.env.JOBS || '/jobs';
  for (const d of ['work', 'finished']) fs.mkdirSync(path.join(jobs, d), { recursive: true });
  const drain = watchDrain(sidecar);
  say('ready');

  while (!drain.draining) {
    const name = take(jobs);
    if (name === null) {
      await sleep(100); // idle: no spinning
      continue;
    }
    say('took', name);
    const p = path.join(jobs, 'work', name);
    let left = parseFloat(fs.readFileSync(p, 'utf8')) * 1000 || 0;
    let handedBack = false;
    while (left > 0) {
      // Once draining, finish only if the rest fits before the deadline.
      if (drain.draining && left > deadlineOf(drain.state) - Date.now() - MARGIN_MS) {
        fs.renameSync(p, path.join(jobs, name));
        say('handed back', name);
        handedBack = true;
        break;
      }
      const step = Math.min(left, 50);
      await sleep(step); // the work
      left -= step;
    }
    if (!handedBack) {
      fs.renameSync(p, path.join(jobs, 'finished', name));
      say('finished', name);
    }
  }

  await sidecar.done();
  const deadline = deadlineOf(drain.state);
  say('drained:', drain.state.reason, 'deadline', Number.isFinite(deadline) ? new Date(deadline).toISOString() : 'none');
  process.exit(0); // the watcher holds no more requests; exit now
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
