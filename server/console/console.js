/*
 * infera console: models, inference, fine-tuning jobs and (for admins) the audit log, all
 * through the public API with the key the user pastes.
 *
 * Rules this file keeps (the server's CSP enforces some of them):
 * - the key lives in sessionStorage only: never localStorage, cookies or a URL;
 * - every string from the server reaches the DOM through textContent or setAttribute on a
 *   plain attribute (never innerHTML, never an on* attribute, never a URL);
 * - no inline handlers, no other hosts: everything is addEventListener and same-origin fetch.
 */
'use strict';

(function () {
  const KEY_SLOT = 'infera.key';
  const ACTIVE = new Set(['validating_files', 'queued', 'running']);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    key: '',
    models: [],          // metadata objects, in the order of GET /v2/models
    jobId: null,         // the job whose curves are shown
    pollTimer: null,
  };

  const $ = (id) => document.getElementById(id);

  /* ---------------------------------------------------------------------------------------
   * DOM helpers: text only
   * ------------------------------------------------------------------------------------- */

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function showError(id, msg) {
    const p = $(id);
    p.textContent = msg || '';
    p.hidden = !msg;
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      if (c instanceof Node) td.appendChild(c);
      else td.textContent = c === undefined || c === null ? '' : String(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function shorten(s, n) {
    s = String(s);
    return s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
  }

  function when(t) {
    if (typeof t === 'number') return new Date(t * 1000).toLocaleString();
    return t === undefined || t === null ? '' : String(t);
  }

  /* ---------------------------------------------------------------------------------------
   * The API
   * ------------------------------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /* {"error": "..."} on OIP routes, {"error": {"message": ...}} on /v1 routes. */
  function errorText(status, body) {
    let msg = '';
    if (body && typeof body === 'object' && body.error !== undefined) {
      msg = typeof body.error === 'string' ? body.error
        : (body.error && typeof body.error.message === 'string' ? body.error.message : '');
    } else if (typeof body === 'string') {
      msg = body.slice(0, 200);
    }
    return 'HTTP ' + status + (msg ? ': ' + msg : '');
  }

  /* Calls the API with the key; resolves to the parsed body, rejects with ApiError. body may be
   * an object (sent as JSON), FormData (multipart) or undefined. */
  async function api(method, path, body) {
    const headers = {};
    if (state.key) headers['Authorization'] = 'Bearer ' + state.key;
    let payload;
    if (body instanceof FormData) {
      payload = body; // the browser sets multipart/form-data with its boundary
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: payload, cache: 'no-store', credentials: 'omit',
        redirect: 'error', referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      throw new ApiError(0, 'request failed: ' + (e && e.message ? e.message : e));
    }
    const ct = resp.headers.get('Content-Type') || '';
    let parsed;
    try {
      parsed = ct.startsWith('application/json') ? await resp.json() : await resp.text();
    } catch (e) {
      throw new ApiError(resp.status, 'HTTP ' + resp.status + ': unreadable answer');
    }
    if (!resp.ok) {
      if (resp.status === 401) keyRejected(errorText(401, parsed));
      throw new ApiError(resp.status, errorText(resp.status, parsed));
    }
    return parsed;
  }

  const seg = encodeURIComponent;

  /* ---------------------------------------------------------------------------------------
   * The key
   * ------------------------------------------------------------------------------------- */

  function keyId(k) {
    const m = /^ifr_([A-Za-z0-9]+)_/.exec(k);
    return m ? m[1] : '(unrecognised format)';
  }

  function setKeyStatus(msg, isError) {
    const p = $('key-status');
    p.textContent = msg;
    p.className = isError ? 'status error' : 'status';
  }

  function keyRejected(msg) {
    setKeyStatus('The server refused this key (' + msg + '). Paste another one.', true);
  }

  async function connect(k) {
    state.key = k;
    stopPolling();
    $('app').hidden = false;
    setKeyStatus('Connecting as key ' + keyId(k) + '\u2026', false);
    const ok = await loadModels();
    if (ok) {
      setKeyStatus('Connected as key ' + keyId(k) + ': ' + state.models.length +
                    ' model(s). The key stays in this tab only.', false);
    }
    loadJobs();
    loadAudit();
  }

  function forget() {
    sessionStorage.removeItem(KEY_SLOT);
    state.key = '';
    state.models = [];
    state.jobId = null;
    stopPolling();
    $('key-input').value = '';
    $('app').hidden = true;
    for (const id of ['models-table', 'jobs-table', 'audit-table', 'infer-outputs']) {
      clear($(id).querySelector('tbody'));
    }
    clear($('infer-inputs'));
    clear($('infer-model'));
    clear($('job-model'));
    $('infer-result').hidden = true;
    $('job-detail').hidden = true;
    $('audit-panel').hidden = true;
    setKeyStatus('Key forgotten. Paste an API key to start.', false);
  }

  /* ---------------------------------------------------------------------------------------
   * Models
   * ------------------------------------------------------------------------------------- */

  function tensorList(ts) {
    return (Array.isArray(ts) ? ts : []).map(
      (t) => t.name + ' ' + t.datatype + ' ' + JSON.stringify(t.shape)).join('; ');
  }

  async function loadModels() {
    showError('models-error', '');
    const tbody = $('models-table').querySelector('tbody');
    let list;
    try {
      list = await api('GET', '/v2/models');
    } catch (e) {
      showError('models-error', 'Models: ' + e.message);
      if (e.status === 403) setKeyStatus('Connected as key ' + keyId(state.key) +
                                         ': it may not read models (403).', true);
      return false;
    }
    const names = (list.models || []).map((m) => m.name);
    const metas = await Promise.all(names.map(async (n, i) => {
      try {
        const meta = await api('GET', '/v2/models/' + seg(n));
        meta.ready = list.models[i].ready;
        return meta;
      } catch (e) {
        return { name: n, versions: list.models[i].versions, ready: list.models[i].ready,
                 inputs: [], outputs: [], error: e.message };
      }
    }));
    state.models = metas;
    clear(tbody);
    for (const m of metas) {
      const labels = modelLabels(m);
      tbody.appendChild(row([m.name, (m.versions || []).join(', '), m.ready ? 'yes' : 'no',
                             m.error ? m.error : tensorList(m.inputs), tensorList(m.outputs),
                             shorten(labels.join(', '), 80)]));
    }
    fillModelSelect($('infer-model'), metas);
    fillModelSelect($('job-model'), metas);
    renderInferInputs();
    return true;
  }

  function modelLabels(m) {
    return (m.parameters && Array.isArray(m.parameters.labels)) ? m.parameters.labels : [];
  }

  function fillModelSelect(sel, metas) {
    const keep = sel.value;
    clear(sel);
    for (const m of metas) {
      const o = el('option', m.name);
      o.value = m.name;
      sel.appendChild(o);
    }
    if (metas.some((m) => m.name === keep)) sel.value = keep;
  }

  /* ---------------------------------------------------------------------------------------
   * Inference
   * ------------------------------------------------------------------------------------- */

  function currentModel() {
    const name = $('infer-model').value;
    return state.models.find((m) => m.name === name);
  }

  /* Elements in one batch row: the product of the dimensions after the batch dimension, or
   * null when one of them is variable. */
  function rowSize(shape) {
    let n = 1;
    for (const d of shape.slice(1)) {
      if (typeof d !== 'number' || d < 0) return null;
      n *= d;
    }
    return n;
  }

  function renderInferInputs() {
    const box = $('infer-inputs');
    clear(box);
    $('infer-result').hidden = true;
    showError('infer-error', '');
    const m = currentModel();
    if (!m) return;
    (m.inputs || []).forEach((t, i) => {
      const id = 'infer-input-' + i;
      const label = el('label', t.name + ' (' + t.datatype + ', shape ' +
                       JSON.stringify(t.shape) + ')');
      label.htmlFor = id;
      const area = el('textarea');
      area.id = id;
      area.className = 'infer-input';
      area.rows = 4;
      area.spellcheck = false;
      const n = Array.isArray(t.shape) ? rowSize(t.shape) : null;
      if (t.datatype === 'BYTES') {
        area.placeholder = 'one text per line (one line = one batch row)';
      } else {
        area.placeholder = 'numbers separated by commas or spaces, or a JSON array; ' +
          (n ? n + ' per row' : 'any count');
        if (n && n <= 4096) area.value = new Array(n).fill(0).join(', ');
      }
      box.appendChild(label);
      box.appendChild(area);
    });
  }

  function flatten(v, out) {
    if (Array.isArray(v)) for (const x of v) flatten(x, out);
    else out.push(v);
    return out;
  }

  /* Builds one OIP input tensor from the text of its field; throws Error with a message. */
  function buildInput(t, text) {
    const shape = Array.isArray(t.shape) ? t.shape : [-1];
    let data;
    const s = text.trim();
    if (s.startsWith('[')) {
      try {
        data = flatten(JSON.parse(s), []);
      } catch (e) {
        throw new Error(t.name + ': not a JSON array (' + e.message + ')');
      }
    } else if (t.datatype === 'BYTES') {
      data = s.split('\n').map((x) => x.trim()).filter((x) => x.length > 0);
    } else {
      data = s.split(/[\s,;]+/).filter((x) => x.length > 0).map((x) => {
        if (t.datatype === 'BOOL' && (x === 'true' || x === 'false')) return x === 'true';
        const v = Number(x);
        if (!Number.isFinite(v)) {
          throw new Error(t.name + ': "' + shorten(x, 20) + '" is not a number');
        }
        return v;
      });
    }
    if (data.length === 0) throw new Error(t.name + ': no values');
    let n = rowSize(shape);
    let rest = shape.slice(1);
    if (n === null) { // a variable inner dimension: send one row of everything
      n = data.length;
      rest = [n];
    }
    if (n === 0 || data.length % n !== 0) {
      throw new Error(t.name + ': ' + data.length + ' values do not fill rows of ' + n +
                      ' (shape ' + JSON.stringify(shape) + ')');
    }
    return { name: t.name, datatype: t.datatype, shape: [data.length / n].concat(rest), data };
  }

  async function runInference(ev) {
    ev.preventDefault();
    showError('infer-error', '');
    $('infer-result').hidden = true;
    const m = currentModel();
    if (!m) {
      showError('infer-error', 'Pick a model first.');
      return;
    }
    let req;
    try {
      req = { inputs: (m.inputs || []).map((t, i) => buildInput(t, $('infer-input-' + i).value)) };
    } catch (e) {
      showError('infer-error', e.message);
      return;
    }
    const k = parseInt($('infer-topk').value, 10);
    if (k > 0) req.parameters = { top_k: k };
    $('infer-request').textContent = shorten(JSON.stringify(req), 4000);
    $('infer-busy').hidden = false;
    $('infer-run').disabled = true;
    try {
      const resp = await api('POST', '/v2/models/' + seg(m.name) + '/infer', req);
      showResult(m, resp);
    } catch (e) {
      showError('infer-error', 'Inference: ' + e.message);
    } finally {
      $('infer-busy').hidden = true;
      $('infer-run').disabled = false;
    }
  }

  function showResult(m, resp) {
    const outs = Array.isArray(resp.outputs) ? resp.outputs : [];
    const byName = (n) => outs.find((o) => o.name === n);
    const label = byName('label');
    const output = byName('output');
    let headline = '';
    if (label && Array.isArray(label.data)) headline = label.data.join(', ');
    else if (output && Array.isArray(output.data)) {
      headline = flatten(output.data, []).slice(0, 8)
        .map((v) => Number(v).toPrecision(5)).join(', ');
    } else if (outs.length > 0) headline = '(see outputs)';
    $('infer-label').textContent = headline;

    const tbody = $('infer-outputs').querySelector('tbody');
    clear(tbody);
    for (const o of outs) {
      tbody.appendChild(row([o.name, o.datatype, JSON.stringify(o.shape),
                             shorten(JSON.stringify(o.data), 300)]));
    }
    const chart = $('infer-chart');
    clear(chart);
    const probs = byName('probabilities');
    if (probs && Array.isArray(probs.shape) && probs.shape.length === 2) {
      const c = probs.shape[1];
      const first = flatten(probs.data, []).slice(0, c);
      const labels = modelLabels(m);
      const named = first.map((p, i) => [i < labels.length ? labels[i] : String(i), p]);
      chart.appendChild(barChart(named));
    }
    $('infer-result').hidden = false;
  }

  /* ---------------------------------------------------------------------------------------
   * Charts (SVG built node by node; values and labels as text)
   * ------------------------------------------------------------------------------------- */

  function barChart(pairs) {
    const rowH = 18, labelW = 110, barW = 300, w = labelW + barW + 70;
    const h = pairs.length * rowH + 4;
    const s = svg('svg', { class: 'chart bars', viewBox: '0 0 ' + w + ' ' + h,
                           role: 'img', 'aria-label': 'class probabilities of the first row' });
    const best = pairs.reduce((b, p, i) => (p[1] > pairs[b][1] ? i : b), 0);
    pairs.forEach(([name, p], i) => {
      const y = i * rowH + 2;
      const v = Math.max(0, Math.min(1, Number(p) || 0));
      s.appendChild(svg('text', { x: labelW - 6, y: y + 13, 'text-anchor': 'end' },
                        shorten(name, 16)));
      s.appendChild(svg('rect', { x: labelW, y: y + 2, width: Math.max(1, v * barW).toFixed(1),
                                  height: rowH - 5, class: i === best ? 'bar best' : 'bar' }));
      s.appendChild(svg('text', { x: labelW + v * barW + 6, y: y + 13 },
                        (v * 100).toFixed(1) + '%'));
    });
    return s;
  }

  /* series: [{name, cls, points: [[x, y], ...]}]; draws lines with min/max ticks. yFixed:
   * [min, max] of the y axis, or undefined to fit the data. */
  function lineChart(series, yFixed, xLabel, emptyText) {
    const W = 460, H = 220, L = 52, R = 12, T = 12, B = 40;
    const s = svg('svg', { class: 'chart lines', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    const pts = series.flatMap((x) => x.points);
    if (pts.length === 0) {
      s.appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' },
                        emptyText || 'no values'));
      return s;
    }
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    let y0 = yFixed ? yFixed[0] : Math.min(...pts.map((p) => p[1]));
    let y1 = yFixed ? yFixed[1] : Math.max(...pts.map((p) => p[1]));
    if (!yFixed) y0 = Math.min(0, y0);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) y1 = y0 + 1;
    const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    s.appendChild(svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    s.appendChild(svg('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }));
    const fmt = (v) => Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
    s.appendChild(svg('text', { x: L - 4, y: T + 4, 'text-anchor': 'end' }, fmt(y1)));
    s.appendChild(svg('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, fmt(y0)));
    s.appendChild(svg('text', { x: L, y: H - B + 14, 'text-anchor': 'middle' }, fmt(x0)));
    s.appendChild(svg('text', { x: W - R, y: H - B + 14, 'text-anchor': 'end' }, fmt(x1)));
    if (xLabel) {
      s.appendChild(svg('text', { x: W - R, y: H - 2, 'text-anchor': 'end', class: 'xlabel' },
                        xLabel));
    }
    let lx = L;
    for (const ser of series) {
      if (ser.points.length === 0) continue;
      const d = ser.points.map((p) => X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1)).join(' ');
      s.appendChild(svg('polyline', { points: d, class: 'series ' + ser.cls }));
      for (const p of ser.points) {
        s.appendChild(svg('circle', { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.5,
                                      class: 'dot ' + ser.cls }));
      }
      s.appendChild(svg('rect', { x: lx, y: H - 14, width: 12, height: 4,
                                  class: 'swatch ' + ser.cls }));
      s.appendChild(svg('text', { x: lx + 16, y: H - 9 }, ser.name));
      lx += 20 + 8 * ser.name.length + 12;
    }
    return s;
  }

  /* ---------------------------------------------------------------------------------------
   * Files and fine-tuning jobs
   * ------------------------------------------------------------------------------------- */

  async function upload(ev) {
    ev.preventDefault();
    showError('upload-error', '');
    const f = $('upload-file').files[0];
    if (!f) {
      showError('upload-error', 'Choose a JSONL file first.');
      return;
    }
    const fd = new FormData();
    fd.append('purpose', 'fine-tune');
    fd.append('file', f, f.name);
    $('upload-status').textContent = 'uploading\u2026';
    try {
      const obj = await api('POST', '/v1/files', fd);
      $('upload-status').textContent = 'uploaded ' + obj.id +
        (obj.bytes !== undefined ? ' (' + obj.bytes + ' bytes)' : '');
      $('job-file').value = obj.id || '';
    } catch (e) {
      $('upload-status').textContent = '';
      showError('upload-error', 'Upload: ' + e.message);
    }
  }

  async function createJob(ev) {
    ev.preventDefault();
    showError('job-error', '');
    const body = { model: $('job-model').value, training_file: $('job-file').value.trim() };
    const epochs = parseInt($('job-epochs').value, 10);
    if (epochs > 0) body.hyperparameters = { n_epochs: epochs };
    const suffix = $('job-suffix').value.trim();
    if (suffix) body.suffix = suffix;
    if (!body.training_file) {
      showError('job-error', 'Upload a file or paste a file id first.');
      return;
    }
    try {
      const job = await api('POST', '/v1/fine_tuning/jobs', body);
      await loadJobs();
      if (job && job.id) selectJob(job.id);
    } catch (e) {
      showError('job-error', 'Start job: ' + e.message);
    }
  }

  async function loadJobs() {
    showError('jobs-error', '');
    const tbody = $('jobs-table').querySelector('tbody');
    let list;
    try {
      list = await api('GET', '/v1/fine_tuning/jobs?limit=20');
    } catch (e) {
      clear(tbody);
      showError('jobs-error', 'Jobs: ' + e.message);
      return [];
    }
    const jobs = Array.isArray(list.data) ? list.data : [];
    clear(tbody);
    if (jobs.length === 0) {
      const tr = row(['no jobs yet']);
      tr.firstChild.colSpan = 6;
      tr.className = 'muted';
      tbody.appendChild(tr);
    }
    for (const j of jobs) {
      const actions = el('span');
      const show = el('button', 'curves', 'secondary small');
      show.type = 'button';
      show.addEventListener('click', () => selectJob(j.id));
      actions.appendChild(show);
      if (ACTIVE.has(j.status)) {
        const cancel = el('button', 'cancel', 'danger small');
        cancel.type = 'button';
        cancel.addEventListener('click', () => cancelJob(j.id));
        actions.appendChild(cancel);
      }
      const tr = row([j.id, j.model, el('span', j.status, 'badge ' + statusClass(j.status)),
                      when(j.created_at), j.fine_tuned_model || '', actions]);
      tr.dataset.jobId = String(j.id);
      tbody.appendChild(tr);
    }
    return jobs;
  }

  function statusClass(s) {
    return s === 'succeeded' ? 'ok' : s === 'failed' ? 'bad' : s === 'cancelled' ? 'muted' : 'busy';
  }

  async function cancelJob(id) {
    showError('jobs-error', '');
    try {
      await api('POST', '/v1/fine_tuning/jobs/' + seg(id) + '/cancel');
    } catch (e) {
      showError('jobs-error', 'Cancel ' + id + ': ' + e.message);
    }
    await loadJobs();
    if (state.jobId === id) refreshJob();
  }

  function selectJob(id) {
    state.jobId = id;
    $('job-detail').hidden = false;
    $('job-detail-id').textContent = id;
    refreshJob();
  }

  /* Reloads the selected job and its events; keeps polling while it is active. */
  async function refreshJob() {
    const id = state.jobId;
    if (!id) return;
    stopPolling();
    let job = null;
    try {
      job = await api('GET', '/v1/fine_tuning/jobs/' + seg(id));
      const b = $('job-detail-status');
      b.textContent = job.status + (job.error && job.error.message ? ': ' + job.error.message : '');
      b.className = 'badge ' + statusClass(job.status);
    } catch (e) {
      showError('events-error', 'Job: ' + e.message);
    }
    try {
      const ev = await api('GET', '/v1/fine_tuning/jobs/' + seg(id) + '/events?limit=100');
      showError('events-error', '');
      drawEvents(Array.isArray(ev.data) ? ev.data.slice().reverse() : [], // oldest first
                 !job || ACTIVE.has(job.status));
    } catch (e) {
      showError('events-error', 'Events: ' + e.message);
    }
    if (state.jobId === id && job && ACTIVE.has(job.status)) {
      state.pollTimer = setTimeout(() => { refreshJob(); loadJobs(); }, 2000);
    }
  }

  function stopPolling() {
    if (state.pollTimer !== null) clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  function drawEvents(events, active) {
    const train = [], valid = [], acc = [];
    const metrics = events.filter((e) => e && e.data && typeof e.data === 'object' &&
                                         (!e.type || e.type === 'metrics'));
    // x: the step when every event has one (several events per epoch stay apart), else the
    // epoch, else the event's place.
    const xKey = metrics.every((e) => typeof e.data.step === 'number') ? 'step'
      : metrics.every((e) => typeof e.data.epoch === 'number') ? 'epoch' : null;
    let i = 0;
    for (const e of metrics) {
      const d = e.data;
      i++;
      const x = xKey ? d[xKey] : i;
      if (typeof d.train_loss === 'number') train.push([x, d.train_loss]);
      if (typeof d.valid_loss === 'number') valid.push([x, d.valid_loss]);
      if (typeof d.valid_accuracy === 'number') acc.push([x, d.valid_accuracy]);
    }
    const empty = active ? 'no values yet' : 'none reported';
    const lossBox = $('chart-loss'), accBox = $('chart-acc');
    clear(lossBox);
    clear(accBox);
    lossBox.appendChild(lineChart([{ name: 'train_loss', cls: 's1', points: train },
                                   { name: 'valid_loss', cls: 's2', points: valid }],
                                  undefined, xKey || 'event', empty));
    accBox.appendChild(lineChart([{ name: 'valid_accuracy', cls: 's3', points: acc }], [0, 1],
                                 xKey || 'event', empty));
    const log = $('job-messages');
    clear(log);
    for (const e of events.slice(-30)) {
      if (!e || typeof e.message !== 'string' || !e.message) continue;
      const li = el('li');
      li.appendChild(el('span', when(e.created_at) + ' ', 'muted'));
      li.appendChild(el('span', e.message, e.level === 'error' ? 'error' : ''));
      log.appendChild(li);
    }
  }

  /* ---------------------------------------------------------------------------------------
   * Audit (admin keys)
   * ------------------------------------------------------------------------------------- */

  async function loadAudit() {
    const panel = $('audit-panel');
    const status = $('audit-status');
    const tbody = $('audit-table').querySelector('tbody');
    let list;
    try {
      list = await api('GET', '/v1/audit?limit=50');
    } catch (e) {
      clear(tbody);
      if (e.status === 403 || e.status === 401) { // not an admin key: nothing to show
        panel.hidden = true;
        return;
      }
      panel.hidden = false;
      status.textContent = e.status === 404
        ? 'Audit records: not available on this server (' + e.message + ').'
        : 'Audit records: ' + e.message;
      status.className = e.status === 404 ? 'muted' : 'error';
      return;
    }
    panel.hidden = false;
    const recs = Array.isArray(list.data) ? list.data : [];
    status.textContent = recs.length + ' latest record(s), newest first' +
      (list.has_more ? '; older ones are in the log' : '') + '.';
    status.className = 'muted';
    clear(tbody);
    for (const r of recs) {
      tbody.appendChild(row([r.seq, when(r.ts), r.event, r.key_id || '', r.method || '',
                             r.route || '', r.status === undefined ? '' : r.status,
                             r.outcome || '', r.latency_us === undefined ? '' : r.latency_us]));
    }
  }

  /* ---------------------------------------------------------------------------------------
   * Wiring
   * ------------------------------------------------------------------------------------- */

  document.addEventListener('DOMContentLoaded', () => {
    $('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const k = $('key-input').value.trim();
      $('key-input').value = '';
      if (!/^[\x21-\x7e]+$/.test(k)) {
        setKeyStatus('That does not look like an API key (printable ASCII, no spaces).', true);
        return;
      }
      sessionStorage.setItem(KEY_SLOT, k);
      connect(k);
    });
    $('key-forget').addEventListener('click', forget);
    $('models-refresh').addEventListener('click', loadModels);
    $('infer-model').addEventListener('change', renderInferInputs);
    $('infer-form').addEventListener('submit', runInference);
    $('upload-form').addEventListener('submit', upload);
    $('job-form').addEventListener('submit', createJob);
    $('jobs-refresh').addEventListener('click', loadJobs);
    $('audit-refresh').addEventListener('click', loadAudit);
    const saved = sessionStorage.getItem(KEY_SLOT);
    if (saved) connect(saved);
  });
})();
