// Drives infera's OpenAI-compatible files and fine-tuning API (DESIGN.md section 5) with the
// official `openai` Node SDK, used exactly as a user would: new OpenAI({ baseURL, apiKey }).
//
// Started by test_openai_sdk.py against a real server; by hand:
//   INFERA_BASE_URL=http://127.0.0.1:8080/v1 INFERA_API_KEY=ifr_... \
//   INFERA_TRAIN_FILE=/tmp/reg200.jsonl INFERA_CANCEL_FILE=../../examples/digits/train.jsonl \
//   node openai_sdk.test.mjs
//
// Environment:
//   INFERA_BASE_URL     the server's /v1 base URL (required)
//   INFERA_API_KEY      a key with the train and infer scopes (required)
//   INFERA_TRAIN_FILE   a small regression training file (JSONL) for INFERA_MODEL
//   INFERA_MODEL        the served regression model to fine-tune (default "reg")
//   INFERA_CANCEL_MODEL a served model whose fine-tuning takes seconds (default "cnn")
//   INFERA_CANCEL_FILE  its training file (the digits set)
//   INFERA_TIMEOUT_S    how long a job may take to finish (default 120)
//   INFERA_KEEP_GOING=1 report every failed check instead of stopping at the first
//
// Prints one line per check ("ok   name" or "FAIL name: why") and a closing
// "N passed, M failed" line; exits 1 on failure (at the first one unless INFERA_KEEP_GOING).
import fs from 'node:fs';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';

const env = process.env;
const baseURL = env.INFERA_BASE_URL;
const apiKey = env.INFERA_API_KEY;
const trainPath = env.INFERA_TRAIN_FILE;
const cancelPath = env.INFERA_CANCEL_FILE;
const MODEL = env.INFERA_MODEL || 'reg';
const CANCEL_MODEL = env.INFERA_CANCEL_MODEL || 'cnn';
const TIMEOUT_MS = Number(env.INFERA_TIMEOUT_S || 120) * 1000;
const KEEP_GOING = env.INFERA_KEEP_GOING === '1';
if (!baseURL || !apiKey || !trainPath || !cancelPath) {
  console.error('set INFERA_BASE_URL, INFERA_API_KEY, INFERA_TRAIN_FILE and INFERA_CANCEL_FILE');
  process.exit(2);
}
const origin = new URL(baseURL).origin; // http://127.0.0.1:<port>, for the /v2 inference call

// maxRetries 0: the SDK's default retries (on 408/409/429/5xx and connection errors) would hide
// a server that answers wrongly once; this test wants to see every answer as it is.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });

let passed = 0;
let failed = 0;

class CheckError extends Error {}

function fail(msg) {
  throw new CheckError(msg);
}

function assert(cond, msg) {
  if (!cond) fail(msg);
}

function eq(actual, expected, what) {
  if (actual !== expected) {
    fail(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

function hasFields(obj, fields, what) {
  const missing = fields.filter((f) => !Object.prototype.hasOwnProperty.call(obj ?? {}, f));
  if (missing.length) fail(`${what} lacks ${missing.join(', ')}: ${JSON.stringify(obj)}`);
}

function describe(err) {
  if (err instanceof OpenAI.APIError) {
    return `${err.constructor.name} status=${err.status} message=${JSON.stringify(err.message)}` +
      ` error=${JSON.stringify(err.error)}`;
  }
  return err?.stack || String(err);
}

// Runs one named check. Returns fn's value, or undefined after a failure in keep-going mode.
async function check(name, fn) {
  try {
    const v = await fn();
    passed++;
    console.log(`ok   ${name}`);
    return v;
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err instanceof CheckError ? err.message : describe(err)}`);
    if (!KEEP_GOING) finish();
    return undefined;
  }
}

function finish() {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

// Awaits promise; it must reject with an error of class cls and HTTP status. Returns the error.
async function expectError(promise, cls, status) {
  let err;
  try {
    const v = await promise;
    fail(`expected ${cls.name} (${status}), got success: ${JSON.stringify(v)}`);
  } catch (e) {
    if (e instanceof CheckError) throw e;
    err = e;
  }
  if (!(err instanceof cls)) fail(`expected ${cls.name} (${status}), got ${describe(err)}`);
  eq(err.status, status, 'status');
  assert(typeof err.error?.message === 'string' && err.error.message.length > 0,
    `error body lacks {"error": {"message"}}: ${JSON.stringify(err.error)}`);
  hasFields(err.error, ['message', 'type', 'param', 'code'], 'error object');
  return err;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const STATUSES = new Set(['validating_files', 'queued', 'running', ...TERMINAL]);

async function waitTerminal(id) {
  const deadline = Date.now() + TIMEOUT_MS;
  let job;
  for (;;) {
    job = await client.fineTuning.jobs.retrieve(id);
    assert(STATUSES.has(job.status), `job ${id} has status ${JSON.stringify(job.status)}`);
    if (TERMINAL.has(job.status)) return job;
    if (Date.now() > deadline) fail(`job ${id} still ${job.status} after ${TIMEOUT_MS / 1000} s`);
    await sleep(100);
  }
}

const JOB_FIELDS = ['id', 'object', 'created_at', 'error', 'fine_tuned_model', 'finished_at',
  'hyperparameters', 'model', 'organization_id', 'result_files', 'seed', 'status',
  'trained_tokens', 'training_file', 'validation_file'];
const FILE_FIELDS = ['id', 'object', 'bytes', 'created_at', 'filename', 'purpose'];

function checkJob(job, want) {
  hasFields(job, JOB_FIELDS, 'fine-tuning job');
  eq(job.object, 'fine_tuning.job', 'job.object');
  assert(typeof job.id === 'string' && job.id.startsWith('ftjob-'), `job id ${job.id}`);
  assert(Number.isInteger(job.created_at), `job.created_at ${job.created_at}`);
  assert(STATUSES.has(job.status), `job.status ${job.status}`);
  assert(Array.isArray(job.result_files), `job.result_files ${JSON.stringify(job.result_files)}`);
  for (const [k, v] of Object.entries(want)) eq(job[k], v, `job.${k}`);
}

function checkFile(f, want) {
  hasFields(f, FILE_FIELDS, 'file');
  eq(f.object, 'file', 'file.object');
  assert(typeof f.id === 'string' && f.id.startsWith('file-'), `file id ${f.id}`);
  assert(Number.isInteger(f.created_at), `file.created_at ${f.created_at}`);
  for (const [k, v] of Object.entries(want)) eq(f[k], v, `file.${k}`);
}

// Walks a cursor list by hand (hasNextPage/getNextPage); returns [items, pages].
async function walkPages(first, limit) {
  const items = [];
  let pages = 0;
  let page = await first;
  for (;;) {
    pages++;
    assert(Array.isArray(page.data), `page without data: ${JSON.stringify(page.body)}`);
    assert(page.data.length <= limit, `page of ${page.data.length} items over limit ${limit}`);
    assert(typeof page.body.has_more === 'boolean',
      `page has_more is ${JSON.stringify(page.body.has_more)}`);
    eq(page.body.object, 'list', 'page.object');
    items.push(...page.data);
    if (!page.hasNextPage()) break;
    assert(pages < 1000, 'pagination does not end');
    page = await page.getNextPage();
  }
  return [items, pages];
}

async function collect(iterable) {
  const out = [];
  for await (const x of iterable) {
    out.push(x);
    assert(out.length < 100000, 'auto-pagination does not end');
  }
  return out;
}

function unique(ids, what) {
  const seen = new Set();
  for (const id of ids) {
    assert(!seen.has(id), `${what}: ${id} listed twice in ${JSON.stringify(ids)}`);
    seen.add(id);
  }
}

// ---------------------------------------------------------------------------------------------

const trainBytes = fs.readFileSync(trainPath);
const cancelBytes = fs.readFileSync(cancelPath);
const uploaded = []; // ids of the files this run uploads

await check('a bad API key raises AuthenticationError (401)', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'ifr_AAAAAAAA_' + 'A'.repeat(43), maxRetries: 0 });
  await expectError(bad.fineTuning.jobs.list(), OpenAI.AuthenticationError, 401);
  await expectError(bad.files.list(), OpenAI.AuthenticationError, 401);
});

const file = await check('files.create uploads a stream (multipart)', async () => {
  const f = await client.files.create({
    file: fs.createReadStream(trainPath), purpose: 'fine-tune' });
  checkFile(f, {
    bytes: trainBytes.length, filename: path.basename(trainPath), purpose: 'fine-tune' });
  uploaded.push(f.id);
  return f;
});

await check('files.retrieve returns the same file', async () => {
  const f = await client.files.retrieve(file.id);
  checkFile(f, { id: file.id, bytes: file.bytes, filename: file.filename,
    purpose: 'fine-tune', created_at: file.created_at });
});

await check('files.content returns the uploaded bytes', async () => {
  const resp = await client.files.content(file.id);
  const got = Buffer.from(await resp.arrayBuffer());
  assert(got.equals(trainBytes), `content differs: ${got.length} bytes back, ` +
    `${trainBytes.length} uploaded; starts ${JSON.stringify(got.subarray(0, 60).toString())}`);
});

const cancelFile = await check('files.create uploads a buffer via toFile', async () => {
  const f = await client.files.create({
    file: await toFile(cancelBytes, 'digits.jsonl'), purpose: 'fine-tune' });
  checkFile(f, { bytes: cancelBytes.length, filename: 'digits.jsonl', purpose: 'fine-tune' });
  uploaded.push(f.id);
  return f;
});

await check('an invalid training file raises BadRequestError (400) naming the line', async () => {
  const lines = trainBytes.toString().split('\n').filter((l) => l.trim()).slice(0, 5);
  lines[2] = '{"input": [1.0, 2.0], "target": "not a number"}';
  const err = await expectError(client.files.create({
    file: await toFile(Buffer.from(lines.join('\n') + '\n'), 'bad.jsonl'), purpose: 'fine-tune' }),
  OpenAI.BadRequestError, 400);
  assert(/line 3\b/.test(err.message), `message does not name line 3: ${err.message}`);
  const broken = Buffer.from(`${lines[0]}\n{"input": [1, 2], "target": [0.5]\n`);
  const err2 = await expectError(client.files.create({
    file: await toFile(broken, 'broken.jsonl'), purpose: 'fine-tune' }),
  OpenAI.BadRequestError, 400);
  assert(/line 2\b/.test(err2.message), `message does not name line 2: ${err2.message}`);
});

await check('files.list lists each upload once (auto-pagination, limit 1)', async () => {
  const first = await client.files.list();
  assert(Array.isArray(first.data), `files.list data: ${JSON.stringify(first.body)}`);
  for (const id of uploaded) {
    assert(first.data.some((f) => f.id === id), `files.list lacks ${id}`);
  }
  const all = await collect(client.files.list({ limit: 1 }));
  const ids = all.map((f) => f.id);
  unique(ids, 'files.list');
  for (const id of uploaded) assert(ids.includes(id), `paged files.list lacks ${id}: ${ids}`);
  const tuned = await collect(client.files.list({ purpose: 'fine-tune' }));
  eq(tuned.length, uploaded.length, 'files with purpose fine-tune');
});

const job = await check('fineTuning.jobs.create', async () => {
  const j = await client.fineTuning.jobs.create({
    model: MODEL, training_file: file.id, hyperparameters: { n_epochs: 2 }, suffix: 'sdk',
    seed: 7,
  });
  checkJob(j, { model: MODEL, training_file: file.id, seed: 7, validation_file: null });
  eq(j.hyperparameters?.n_epochs, 2, 'job.hyperparameters.n_epochs');
  assert(!TERMINAL.has(j.status) || j.status === 'succeeded', `new job is ${j.status}`);
  return j;
});

const done = await check('fineTuning.jobs.retrieve polls until succeeded', async () => {
  const j = await waitTerminal(job.id);
  assert(j.status === 'succeeded', `job ended ${j.status}: ${JSON.stringify(j.error)}`);
  checkJob(j, { id: job.id, model: MODEL, training_file: file.id, seed: 7, error: null });
  eq(j.fine_tuned_model, `ft:${MODEL}:sdk:${job.id}`, 'fine_tuned_model');
  assert(Number.isInteger(j.finished_at) && j.finished_at >= j.created_at,
    `finished_at ${j.finished_at}`);
  return j;
});

await check('fineTuning.jobs.listEvents pages (limit 5, getNextPage, for await)', async () => {
  const page = await client.fineTuning.jobs.listEvents(job.id, { limit: 5 });
  assert(page.data.length > 0 && page.data.length <= 5, `first page has ${page.data.length}`);
  for (const ev of page.data) {
    hasFields(ev, ['id', 'object', 'created_at', 'level', 'message'], 'event');
    eq(ev.object, 'fine_tuning.job.event', 'event.object');
    assert(['info', 'warn', 'error'].includes(ev.level), `event level ${ev.level}`);
  }
  const [walked] = await walkPages(client.fineTuning.jobs.listEvents(job.id, { limit: 2 }), 2);
  const auto = await collect(client.fineTuning.jobs.listEvents(job.id, { limit: 2 }));
  const big = await client.fineTuning.jobs.listEvents(job.id, { limit: 100 });
  const ids = big.data.map((e) => e.id);
  unique(ids, 'events');
  eq(JSON.stringify(walked.map((e) => e.id)), JSON.stringify(ids), 'events walked by pages');
  eq(JSON.stringify(auto.map((e) => e.id)), JSON.stringify(ids), 'events by for await');
  eq(JSON.stringify(page.data.map((e) => e.id)), JSON.stringify(ids.slice(0, 5)), 'first 5 events');
  for (let i = 1; i < big.data.length; i++) {
    assert(big.data[i - 1].created_at >= big.data[i].created_at,
      `events are not newest first: ${JSON.stringify(big.data.map((e) => e.created_at))}`);
  }
  assert(big.data.some((e) => /succe|complet/i.test(e.message)),
    `no event tells the job succeeded: ${JSON.stringify(big.data.map((e) => e.message))}`);
});

await check('fineTuning.jobs.checkpoints.list', async () => {
  const cps = await collect(client.fineTuning.jobs.checkpoints.list(job.id));
  assert(cps.length > 0, 'a succeeded job has no checkpoints');
  for (const cp of cps) {
    hasFields(cp, ['id', 'object', 'created_at', 'fine_tuned_model_checkpoint',
      'fine_tuning_job_id', 'metrics', 'step_number'], 'checkpoint');
    eq(cp.object, 'fine_tuning.job.checkpoint', 'checkpoint.object');
    eq(cp.fine_tuning_job_id, job.id, 'checkpoint.fine_tuning_job_id');
    assert(cp.id.startsWith('ftckpt-'), `checkpoint id ${cp.id}`);
    assert(Number.isInteger(cp.step_number), `step_number ${cp.step_number}`);
    assert(typeof cp.fine_tuned_model_checkpoint === 'string', 'fine_tuned_model_checkpoint');
    assert(cp.metrics && typeof cp.metrics === 'object', 'metrics');
  }
  unique(cps.map((c) => c.id), 'checkpoints');
});

await check('the fine-tuned model answers OIP inference', async () => {
  const name = done.fine_tuned_model;
  const headers = { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' };
  const meta = await fetch(`${origin}/v2/models/${name}`, { headers });
  const metaText = await meta.text();
  eq(meta.status, 200, `GET /v2/models/${name} (${metaText})`);
  const resp = await fetch(`${origin}/v2/models/${name}/infer`, {
    method: 'POST', headers,
    body: JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [2, 2],
      data: [[0.5, -1.0], [1.5, 0.25]] }] }),
  });
  const text = await resp.text();
  eq(resp.status, 200, `POST /v2/models/${name}/infer (${text})`);
  const body = JSON.parse(text);
  eq(body.model_name, name, 'model_name');
  const out = body.outputs?.find((o) => o.name === 'output');
  assert(out, `no "output" in ${text}`);
  eq(JSON.stringify(out.shape), '[2,1]', 'output shape');
  assert(out.data.flat().length === 2 && out.data.flat().every(Number.isFinite), `output ${text}`);
});

const job2 = await check('fineTuning.jobs.cancel a running job -> cancelled', async () => {
  const j = await client.fineTuning.jobs.create({
    model: CANCEL_MODEL, training_file: cancelFile.id, hyperparameters: { n_epochs: 50 },
    seed: 1 });
  checkJob(j, { model: CANCEL_MODEL, training_file: cancelFile.id });
  assert(!TERMINAL.has(j.status), `a 50-epoch CNN job is already ${j.status}`);
  const c = await client.fineTuning.jobs.cancel(j.id);
  checkJob(c, { id: j.id });
  eq(c.status, 'cancelled', 'status in the answer to cancel');
  const end = await waitTerminal(j.id);
  eq(end.status, 'cancelled', 'status after cancel');
  eq(end.fine_tuned_model, null, 'fine_tuned_model of a cancelled job');
  return j;
});

await check('cancelling a finished job is refused', async () => {
  let err;
  try {
    await client.fineTuning.jobs.cancel(job.id);
  } catch (e) {
    err = e;
  }
  assert(err instanceof OpenAI.APIError && err.status >= 400 && err.status < 500,
    `cancel of a succeeded job: ${err ? describe(err) : 'accepted'}`);
  eq((await client.fineTuning.jobs.retrieve(job.id)).status, 'succeeded', 'status after');
});

await check('fineTuning.jobs.list pages return every job once, newest first', async () => {
  const created = [job.id, job2.id];
  for (let i = 0; i < 3; i++) {
    const j = await client.fineTuning.jobs.create({
      model: MODEL, training_file: file.id, hyperparameters: { n_epochs: 1 }, suffix: `p${i}`,
      metadata: { page: `p${i}` } });
    created.push(j.id);
  }
  const want = JSON.stringify([...created].reverse());
  const [walked, pages] = await walkPages(client.fineTuning.jobs.list({ limit: 2 }), 2);
  for (const j of walked) checkJob(j, {});
  unique(walked.map((j) => j.id), 'jobs walked by pages');
  eq(JSON.stringify(walked.map((j) => j.id)), want, 'jobs walked by pages');
  eq(pages, 3, 'pages of 2 for 5 jobs');
  const auto = await collect(client.fineTuning.jobs.list({ limit: 2 }));
  eq(JSON.stringify(auto.map((j) => j.id)), want, 'jobs by for await');
  const after = await client.fineTuning.jobs.list({ after: created[2], limit: 10 });
  eq(JSON.stringify(after.data.map((j) => j.id)), JSON.stringify([job2.id, job.id]),
    `jobs after ${created[2]}`);
  eq(after.body.has_more, false, 'has_more of the last page');
  const filtered = await client.fineTuning.jobs.list({ metadata: { page: 'p1' } });
  eq(JSON.stringify(filtered.data.map((j) => j.id)), JSON.stringify([created[3]]),
    'jobs.list({metadata: {page: "p1"}})');
});

await check('a missing job raises NotFoundError (404)', async () => {
  await expectError(client.fineTuning.jobs.retrieve('ftjob-doesnotexist0000000000'),
    OpenAI.NotFoundError, 404);
  await expectError(client.fineTuning.jobs.cancel('ftjob-doesnotexist0000000000'),
    OpenAI.NotFoundError, 404);
  await expectError(client.fineTuning.jobs.listEvents('ftjob-doesnotexist0000000000'),
    OpenAI.NotFoundError, 404);
  await expectError(client.files.retrieve('file-doesnotexist00000000000'),
    OpenAI.NotFoundError, 404);
});

await check('a job on a missing file or model is refused (4xx)', async () => {
  for (const body of [{ model: MODEL, training_file: 'file-doesnotexist00000000000' },
    { model: 'no-such-model', training_file: file.id }]) {
    let err;
    try {
      await client.fineTuning.jobs.create(body);
    } catch (e) {
      err = e;
    }
    assert(err instanceof OpenAI.BadRequestError || err instanceof OpenAI.NotFoundError,
      `create ${JSON.stringify(body)}: ${err ? describe(err) : 'accepted'}`);
  }
});

await check('files.delete deletes; the file is gone', async () => {
  const f = await client.files.create({
    file: await toFile(trainBytes, 'to-delete.jsonl'), purpose: 'fine-tune' });
  const del = await client.files.delete(f.id);
  eq(del.id, f.id, 'deleted.id');
  eq(del.object, 'file', 'deleted.object');
  eq(del.deleted, true, 'deleted.deleted');
  await expectError(client.files.retrieve(f.id), OpenAI.NotFoundError, 404);
  await expectError(client.files.content(f.id), OpenAI.NotFoundError, 404);
  await expectError(client.files.delete(f.id), OpenAI.NotFoundError, 404);
  const ids = (await collect(client.files.list())).map((x) => x.id);
  assert(!ids.includes(f.id), 'files.list still lists the deleted file');
});

finish();
