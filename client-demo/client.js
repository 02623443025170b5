#!/usr/bin/env node
// InferenceHub demo client for the seed HTTP API (/register, /image, /result).
// No dependencies: Node 20's fetch, FormData and Blob.

import { randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';

const USAGE = `usage: node client.js --server URL --dir IMAGES_DIR [options]

  --server URL        server base URL (default http://127.0.0.1:8000)
  --dir DIR           folder of images; every image file in it is uploaded
  --loops N           upload the folder N times, seq keeps increasing (default 1)
  --topk K            predictions wanted per image (default 5)
  --timeout SECONDS   give up after this long in total (default 120)
  --poll SECONDS      pause between /result polls (default 0.5)
  --json              print one JSON object per line instead of text
  -h, --help          show this help

A file the server refuses is reported and skipped; the summary line always comes last.
Exit status: 0 when every file was accepted and every result arrived, 1 when a file was
refused, on timeout or on an HTTP or connection error, 2 on bad usage.`;

const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp']);
// An image whose answer did not come (the connection failed) is sent again, up to this
// many times in all, with the Idempotency-Key of its first try: if the server stored it,
// the resend answers 200 instead of making a second job (or a 409 for its taken seq).
const UPLOAD_ATTEMPTS = 4;

// status: the server's HTTP status, or null when no answer came.
class HttpError extends Error {
  constructor(message, status = null) {
    super(message);
    this.status = status;
  }
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: 'string', default: 'http://127.0.0.1:8000' },
      dir: { type: 'string' },
      loops: { type: 'string', default: '1' },
      topk: { type: 'string', default: '5' },
      timeout: { type: 'string', default: '120' },
      poll: { type: 'string', default: '0.5' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.dir) throw new Error('--dir is required');
  const positive = (name, parse) => {
    const value = parse(values[name]);
    if (!(value > 0)) throw new Error(`--${name} must be a positive number, got ${values[name]}`);
    return value;
  };
  return {
    server: values.server.replace(/\/+$/, ''),
    dir: values.dir,
    loops: positive('loops', (v) => (/^\d+$/.test(v) ? Number(v) : NaN)),
    topk: positive('topk', (v) => (/^\d+$/.test(v) ? Number(v) : NaN)),
    timeoutMs: positive('timeout', Number) * 1000,
    pollMs: positive('poll', Number) * 1000,
    json: values.json,
  };
}

async function listImages(dir) {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries
    .filter((e) => e.isFile() && IMAGE_EXTENSIONS.has(path.extname(e.name).toLowerCase()))
    .map((e) => e.name)
    .sort();
}

// fetch that turns any non-2xx answer into an HttpError carrying the server's message.
// A request may run until the deadline, but never gets less than minMs.
async function request(what, url, init, deadline, minMs = 1) {
  const timeoutMs = Math.max(deadline - Date.now(), minMs);
  let response;
  try {
    response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    if (err.name === 'TimeoutError') throw err;
    throw new HttpError(`${what}: ${err.cause?.message ?? err.message}`);
  }
  const body = await response.text();
  if (!response.ok) {
    let message = body.trim().slice(0, 500) || response.statusText;
    try {
      message = JSON.parse(body).error ?? message;
    } catch {
      // not JSON: keep the raw text
    }
    throw new HttpError(`${what} -> ${response.status}: ${message}`, response.status);
  }
  return body;
}

function parseJson(what, body) {
  try {
    return JSON.parse(body);
  } catch {
    throw new HttpError(`${what}: expected JSON, got ${JSON.stringify(body.slice(0, 200))}`);
  }
}

async function register(server, deadline) {
  const body = await request(
    'POST /register',
    `${server}/register`,
    { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' },
    deadline,
  );
  const { uuid } = parseJson('POST /register', body);
  if (!uuid) throw new HttpError(`POST /register: no uuid in ${body}`);
  return uuid;
}

async function upload(server, uuid, seq, topk, name, bytes, deadline) {
  const key = randomUUID();
  for (let attempt = 1; ; attempt++) {
    const form = new FormData();
    form.append('uuid', uuid);
    form.append('seq', String(seq));
    form.append('topk', String(topk));
    form.append('payload', new Blob([bytes], { type: 'application/octet-stream' }), name);
    const init = { method: 'POST', body: form, headers: { 'Idempotency-Key': key } };
    try {
      await request(`POST /image seq=${seq} (${name})`, `${server}/image`, init, deadline);
      return;
    } catch (err) {
      // A 409 on a resend: the first try is still being stored; asking again gets its answer.
      const unanswered = err instanceof HttpError && (err.status === null || (err.status === 409 && attempt > 1));
      if (!unanswered || attempt === UPLOAD_ATTEMPTS) throw err;
      await sleep(Math.min(500 * 2 ** (attempt - 1), Math.max(deadline - Date.now(), 0)));
    }
  }
}

async function fetchResults(server, uuid, seqStart, seqEnd, deadline) {
  const query = new URLSearchParams({ uuid, seqStart: String(seqStart), seqEnd: String(seqEnd) });
  const what = `GET /result?${query}`;
  // The last poll happens right at the deadline: give it a moment to answer.
  const body = await request(what, `${server}/result?${query}`, {}, deadline, 2000);
  return parseJson(what, body).items ?? [];
}

// Predictions are labels; tolerate {label, score} objects too.
function formatPrediction(p) {
  if (typeof p === 'string') return p;
  if (p && typeof p === 'object' && 'label' in p) {
    return typeof p.score === 'number' ? `${p.label} (${p.score.toFixed(3)})` : String(p.label);
  }
  return JSON.stringify(p);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(opts) {
  const started = Date.now();
  const deadline = started + opts.timeoutMs;
  const seconds = () => ((Date.now() - started) / 1000).toFixed(1);
  const print = (text, object) => console.log(opts.json ? JSON.stringify(object) : text);

  const names = await listImages(opts.dir);
  if (names.length === 0) throw new Error(`no image files (${[...IMAGE_EXTENSIONS].join(' ')}) in ${opts.dir}`);
  const files = await Promise.all(names.map(async (name) => [name, await readFile(path.join(opts.dir, name))]));

  const uuid = await register(opts.server, deadline);
  if (!opts.json) console.log(`registered ${uuid}; uploading ${names.length} image(s) x ${opts.loops} loop(s)`);

  // A file the server refuses (a 4xx: not an image, too large...) is reported and skipped;
  // any other failure (no answer, a 5xx, the time up) ends the uploads. Either way the
  // results of what was sent are still awaited and the summary is printed last.
  const pending = new Map(); // seq -> file name
  const refused = [];
  let stopped = null;
  let seq = 0;
  uploads: for (let loop = 0; loop < opts.loops; loop++) {
    for (const [name, bytes] of files) {
      try {
        await upload(opts.server, uuid, seq, opts.topk, name, bytes, deadline);
        pending.set(seq, name);
      } catch (err) {
        const isRefusal = err instanceof HttpError && err.status >= 400 && err.status < 500;
        if (!isRefusal) {
          stopped = err;
          break uploads;
        }
        refused.push({ seq, file: name, error: err.message });
        print(`seq=${seq} ${name} refused: ${err.message}`, { type: 'refused', uuid, seq, file: name, error: err.message });
      }
      seq++;
    }
  }
  const total = pending.size;
  if (stopped) {
    console.error(`error: ${stopped.name === 'TimeoutError' ? 'timed out while uploading' : stopped.message}`);
  }
  if (!opts.json) console.log(`uploaded ${total} in ${seconds()}s; waiting for results`);

  let timedOut = stopped?.name === 'TimeoutError';
  try {
    while (pending.size > 0 && !timedOut) {
      const seqs = [...pending.keys()];
      const items = await fetchResults(opts.server, uuid, Math.min(...seqs), Math.max(...seqs), deadline);
      for (const item of items) {
        const name = pending.get(item.seq);
        if (name === undefined) continue; // already printed, or outside what we sent
        pending.delete(item.seq);
        const predictions = item.predictions ?? [];
        print(`seq=${item.seq} ${name} -> ${predictions.map(formatPrediction).join(', ')}`, {
          type: 'result',
          uuid,
          seq: item.seq,
          file: name,
          predictions,
        });
      }
      if (pending.size === 0) break;
      const wait = Math.min(opts.pollMs, deadline - Date.now());
      if (wait <= 0) {
        timedOut = true;
        break;
      }
      await sleep(wait);
    }
  } catch (err) {
    if (err.name === 'TimeoutError') timedOut = true;
    else if (!stopped) stopped = err;
    if (err.name !== 'TimeoutError') console.error(`error: ${err.message}`);
  }

  const done = total - pending.size;
  const notes = [timedOut ? ' (timed out)' : '', refused.length ? `, ${refused.length} refused` : '', stopped && !timedOut ? ', stopped by an error' : ''];
  print(`done: ${done}/${total} results in ${seconds()}s${notes.join('')}`, {
    type: 'summary',
    uuid,
    done,
    total,
    seconds: Number(seconds()),
    timedOut,
    missing: [...pending.keys()],
    refused: refused.map((r) => r.seq),
    error: stopped && !timedOut ? stopped.message : null,
  });
  return timedOut || stopped || refused.length ? 1 : 0;
}

async function main() {
  let opts;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error(`error: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  try {
    return await run(opts);
  } catch (err) {
    const message = err.name === 'TimeoutError' ? `timed out after ${opts.timeoutMs / 1000}s` : err.message;
    console.error(`error: ${message}`);
    if (opts.json) {
      const summary = { type: 'summary', uuid: null, done: 0, total: 0, timedOut: err.name === 'TimeoutError' };
      console.log(JSON.stringify({ ...summary, missing: [], refused: [], error: message }));
    }
    return 1;
  }
}

process.exitCode = await main();
