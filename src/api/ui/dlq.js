// The DLQ monitor page: reads the daemon's JSON API and acts through it.
// Everything shown is set with textContent (never HTML), every mutation is
// confirmed or undoable, and the API token (when one is needed) lives in
// sessionStorage for this tab only.
'use strict';

// Every 30 s; ?refresh=N (seconds, at least 1) for a wall screen or a test.
const REFRESH_MS = Math.max(1, Number(new URLSearchParams(location.search).get('refresh')) || 30) * 1000;
const HOUR_MS = 3600e3;
const TOKEN_KEY = 'inferwatch-token';
const $ = (sel, root) => (root || document).querySelector(sel);
const panels = new Map(); // queue -> panel state
let refreshing = false;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function showError(msg) {
  const e = $('#error');
  e.textContent = msg;
  e.hidden = !msg;
}

function say(msg) { $('#status').textContent = msg; }

function anyDialogOpen() { return [...document.querySelectorAll('dialog')].some((d) => d.open); }

// One modal at a time; resolves with what was entered, or null on cancel.
function modal(dialog, okButton, cancelButton, read) {
  return new Promise((resolve) => {
    let result = null;
    const ok = () => { result = read(); dialog.close(); };
    const cancel = () => dialog.close();
    const key = (ev) => { if (ev.key === 'Enter' && ev.target.tagName === 'INPUT') { ev.preventDefault(); ok(); } };
    okButton.addEventListener('click', ok);
    cancelButton.addEventListener('click', cancel);
    dialog.addEventListener('keydown', key);
    dialog.addEventListener('close', () => {
      okButton.removeEventListener('click', ok);
      cancelButton.removeEventListener('click', cancel);
      dialog.removeEventListener('keydown', key);
      resolve(result);
    }, { once: true });
    dialog.showModal();
  });
}

function confirmDialog(text, opts) {
  const o = opts || {};
  $('#confirm-text').textContent = text;
  $('#confirm-sample').textContent = o.sample || '';
  $('#confirm-rate-row').hidden = !o.rate;
  $('#confirm-rate').value = '';
  $('#confirm-ok').textContent = o.ok || 'Confirm';
  return modal($('#confirm'), $('#confirm-ok'), $('#confirm-cancel'), () => ({ rate: $('#confirm-rate').value.trim() }));
}

function askToken() {
  $('#token-input').value = '';
  return modal($('#token-dialog'), $('#token-ok'), $('#token-cancel'), () => $('#token-input').value.trim() || null);
}

async function send(method, path, token) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(path, { method, headers, credentials: 'same-origin', cache: 'no-store' });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  return { r, body };
}

// Calls the API; a mutation that gets 401 asks for the token once and
// retries with it. Errors come back as ApiError with the server's message.
async function api(method, path) {
  const mutating = method !== 'GET';
  let { r, body } = await send(method, path, mutating ? sessionStorage.getItem(TOKEN_KEY) : null);
  if (r.status === 401 && mutating) {
    sessionStorage.removeItem(TOKEN_KEY);
    const t = await askToken();
    if (t) {
      sessionStorage.setItem(TOKEN_KEY, t);
      ({ r, body } = await send(method, path, t));
      if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  if (!r.ok) {
    const why = body && body.error ? body.error : r.statusText;
    const what = r.status === 401 ? 'not authorised' : r.status === 403 ? 'forbidden' : 'error';
    throw new ApiError(r.status, `${r.status} ${what}: ${why}`);
  }
  return body;
}

// Runs an action, showing its error plainly; refreshes after it.
async function act(fn) {
  showError('');
  try {
    const msg = await fn();
    if (msg) say(msg);
  } catch (e) {
    showError(e instanceof ApiError ? e.message : 'Request failed: ' + e.message);
  }
  await refresh();
}

function fmtTime(v) {
  if (v === undefined || v === null) return '';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  return isNaN(d) ? String(v) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function fmtAge(s) {
  if (s === null || s === undefined) return '';
  if (s < 90) return Math.round(s) + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  if (s < 172800) return Math.round(s / 3600) + ' h';
  return Math.round(s / 86400) + ' d';
}

function q(params) {
  return Object.entries(params).filter(([, v]) => v !== '' && v !== null && v !== undefined)
    .map(([k, v]) => encodeURIComponent(k) + '=' + encodeURIComponent(v)).join('&');
}

// --- one panel per queue -------------------------------------------------

function makePanel(view) {
  const node = $('#queue-tpl').content.firstElementChild.cloneNode(true);
  node.dataset.queue = view.queue;
  const p = { node, queue: view.queue, dlq: view.dlq, count: 0, history: [], start: 0, cursors: [],
    filter: {}, archive: null, task: null, framework: view.framework || null };
  $('.q-name', node).textContent = view.queue;
  if (p.framework) {
    // A job framework's failed set: listed and requeued; the rest of the
    // console's moves are the seed's lists' only (docs/job-frameworks.md).
    node.classList.add('framework');
    node.dataset.framework = p.framework;
    $('.q-name', node).append(' ', el('span', { class: 'tag', text: p.framework }));
    // Celery's broker keeps no failed jobs: its panel shows the queue only.
    if (p.framework === 'celery') for (const c of ['.toolbar', '.filters', '.scroll', '.pager']) $(c, node).hidden = true;
  }
  node.addEventListener('toggle', () => { if (node.open) loadJobs(p); });
  $('.requeue-all', node).addEventListener('click', () => requeueAll(p));
  $('.clear-all', node).addEventListener('click', () => clearAll(p));
  $('.undo', node).addEventListener('click', () => undo(p));
  $('.search', node).addEventListener('click', () => { readFilter(p); p.start = 0; p.cursors = []; loadJobs(p); });
  $('.filter-error', node).addEventListener('keydown', (ev) => { if (ev.key === 'Enter') $('.search', node).click(); });
  $('.requeue-matching', node).addEventListener('click', () => requeueMatching(p));
  $('.task-cancel', node).addEventListener('click', () => cancelTask(p));
  $('.page-size', node).addEventListener('change', () => { p.start = 0; p.cursors = []; loadJobs(p); });
  $('.prev', node).addEventListener('click', () => page(p, -1));
  $('.next', node).addEventListener('click', () => page(p, 1));
  $('#queues').append(node);
  return p;
}

function readFilter(p) {
  const f = {};
  const err = $('.filter-error', p.node).value.trim();
  if (err) f.error = err;
  const age = $('.filter-age', p.node).value;
  if (age) { const [k, v] = age.split('='); f[k] = v; }
  p.filter = f;
}

function filtered(p) { return Object.keys(p.filter).length > 0; }

function updatePanel(p, view, count) {
  p.count = count;
  p.dlq = view.dlq || p.dlq;
  const c = $('.q-count', p.node);
  c.textContent = p.framework === 'celery' ? `${view.depth} waiting (read only)`
    : count + (count === 1 ? ' failed job' : ' failed jobs');
  c.classList.toggle('zero', count === 0);
  $('.q-age', p.node).textContent = view.oldest_age_seconds ? 'oldest ' + fmtAge(view.oldest_age_seconds) : '';
  $('.q-active', p.node).textContent = view.active === null || view.active === undefined ? ''
    : `${view.active} in flight, ${view.stuck} stuck`;
  const now = Date.now();
  p.history.push([now, count]);
  p.history = p.history.filter(([t]) => now - t <= HOUR_MS);
  drawSpark(p);
}

function drawSpark(p) {
  const pts = p.history;
  const max = Math.max(1, ...pts.map(([, n]) => n));
  const t0 = Date.now() - HOUR_MS;
  const xy = pts.map(([t, n]) => `${((t - t0) / HOUR_MS * 120).toFixed(1)},${(22 - n / max * 20).toFixed(1)}`);
  if (xy.length === 1) xy.unshift('0,' + xy[0].split(',')[1]);
  $('.spark polyline', p.node).setAttribute('points', xy.join(' '));
  $('.spark', p.node).setAttribute('aria-label', `DLQ depth over the last hour, now ${p.count}`);
}

function jobRow(p, job) {
  const malformed = job.malformed === true || job.truncated === true;
  const expand = el('button', { type: 'button', class: 'expand', 'aria-expanded': 'false', 'aria-label': 'Show job', text: '▸' });
  const err = el('td', { class: 'err' });
  if (job.malformed) err.append(el('span', { class: 'tag', text: 'MALFORMED' }), job.parse_error || '');
  else if (job.truncated) err.append(el('span', { class: 'tag', text: 'TRUNCATED' }), `${job.size} bytes`);
  else err.append(job.error === undefined ? '' : String(job.error));
  const row = el('tr', { class: 'job' + (malformed ? ' malformed' : '') },
    el('td', {}, expand), el('td', { text: String(job.index) }), err,
    el('td', { text: job.attempt_count === undefined || job.attempt_count === null ? '' : String(job.attempt_count) }),
    el('td', { text: fmtTime(job.first_failed_at) }), el('td', { text: fmtTime(job.last_failed_at) }),
    el('td', { class: 'acts' },
      el('button', { type: 'button', class: 'job-requeue', text: 'Requeue', onclick: () => single(p, job, 'requeue') }),
      ' ',
      el('button', { type: 'button', class: 'job-delete danger', text: 'Delete', onclick: () => single(p, job, 'delete') })));
  row.dataset.id = job.id;
  row.dataset.index = job.index;
  if (job.malformed) $('.job-requeue', row).disabled = true;
  if (p.framework) $('.job-delete', row).remove();
  const detail = el('tr', { class: 'detail', hidden: '' });
  let shown;
  if (job.original_job !== undefined) shown = JSON.stringify(job.original_job, null, 2);
  else shown = job.raw;
  const meta = `id ${job.id}` + (job.queue_name ? ` · queue ${job.queue_name}` : '');
  detail.append(el('td', { colspan: '7' }, el('div', { class: 'muted', text: meta }), el('pre', { class: 'original', text: shown })));
  expand.addEventListener('click', () => {
    detail.hidden = !detail.hidden;
    expand.textContent = detail.hidden ? '▸' : '▾';
    expand.setAttribute('aria-expanded', String(!detail.hidden));
  });
  return [row, detail];
}

async function loadJobs(p) {
  if (!p.node.open || p.framework === 'celery') return;
  const size = Number($('.page-size', p.node).value);
  const params = Object.assign({ limit: size }, p.filter);
  if (filtered(p)) params.cursor = p.start; else params.start = p.start;
  try {
    const page = await api('GET', `/api/dlq/jobs/${encodeURIComponent(p.dlq)}?` + q(params));
    // Rows are rebuilt only when the page changed, so a refresh keeps an
    // expanded job open and never moves a button under the pointer.
    const sig = JSON.stringify([params, page.total, page.jobs.map((j) => j.id + ':' + j.index)]);
    if (sig !== p.sig) {
      p.sig = sig;
      const body = $('.jobs tbody', p.node);
      body.replaceChildren(...page.jobs.flatMap((j) => jobRow(p, j)));
      if (page.jobs.length === 0) body.append(el('tr', {}, el('td', { colspan: '7', class: 'muted', text: filtered(p) ? 'No job matches in this stretch.' : 'No failed jobs.' })));
    }
    p.next = filtered(p) ? page.next_cursor : (p.start + page.jobs.length < page.total ? p.start + page.jobs.length : null);
    $('.next', p.node).disabled = p.next === null || p.next === undefined;
    $('.prev', p.node).disabled = p.start === 0;
    $('.page-text', p.node).textContent = filtered(p)
      ? `${page.jobs.length} matching in entries ${page.cursor}–${page.cursor + page.scanned} of ${page.total}`
      : `${page.total ? p.start + 1 : 0}–${p.start + page.jobs.length} of ${page.total}`;
    await loadArchives(p);
  } catch (e) {
    showError(e.message);
  }
}

function page(p, dir) {
  if (dir > 0 && p.next !== null && p.next !== undefined) { p.cursors.push(p.start); p.start = p.next; }
  if (dir < 0) p.start = p.cursors.length ? p.cursors.pop() : 0;
  loadJobs(p);
}

async function loadArchives(p) {
  const list = await api('GET', '/api/system/dlq/archives?' + q({ queue: p.dlq }));
  const newest = list.find((a) => a.jobs > 0) || null;
  p.archive = newest;
  const b = $('.undo', p.node);
  b.hidden = !newest;
  if (newest) b.textContent = `Undo last ${newest.kind === 'cleared' ? 'clear' : 'delete'} (${newest.jobs})`;
}

// --- actions -------------------------------------------------------------

async function requeueAll(p) {
  const ok = await confirmDialog(`Requeue all ${p.count} jobs of ${p.dlq} onto ${p.queue}?`, { ok: 'Requeue all' });
  if (!ok) return;
  await act(async () => {
    const r = await api('POST', '/api/system/dlq/requeue-all?' + q({ queue: p.dlq }));
    return `Requeued ${r.requeued} jobs of ${p.dlq}` + (r.skipped_malformed ? `; ${r.skipped_malformed} malformed stayed` : '') + (r.left ? `; ${r.left} stayed` : '') + (r.taken ? `; ${r.taken} taken by another` : '') + '.';
  });
}

async function clearAll(p) {
  const ok = await confirmDialog(`Clear all ${p.count} jobs of ${p.dlq}? They move to an archive you can undo until it expires.`, { ok: 'Clear all' });
  if (!ok) return;
  await act(async () => {
    const r = await api('DELETE', '/api/system/dlq/clear?' + q({ queue: p.dlq }));
    return `Cleared ${r.cleared} jobs of ${p.dlq} into ${r.archive_key || 'nothing'}.`;
  });
}

async function undo(p) {
  if (!p.archive) return;
  const key = p.archive.archive_key;
  await act(async () => {
    const r = await api('POST', '/api/system/dlq/restore?' + q({ archive: key }));
    return `Restored ${r.restored} jobs from ${key}.`;
  });
}

async function single(p, job, action) {
  await act(async () => {
    const r = await api('POST', `/api/system/dlq/jobs/${job.id}/${action}?` + q({ queue: p.dlq, index: job.index }));
    return action === 'requeue' ? `Requeued job ${r.id}.` : `Deleted job ${r.id} into ${r.target} (undoable).`;
  });
}

async function requeueMatching(p) {
  readFilter(p);
  showError('');
  let dry;
  try {
    dry = await api('POST', '/api/system/dlq/requeue?' + q(Object.assign({ queue: p.dlq, dry_run: 'true' }, p.filter)));
  } catch (e) { showError(e.message); return; }
  const what = filtered(p) ? 'matching ' + Object.entries(p.filter).map(([k, v]) => `${k}=${v}`).join(', ') : 'in the DLQ';
  if (dry.matched === 0) { say(`No job ${what}.`); return; }
  const ok = await confirmDialog(`Requeue ${dry.matched} jobs ${what} from ${p.dlq} onto ${p.queue}?`,
    { ok: `Requeue ${dry.matched}`, rate: true, sample: dry.sample_ids.length ? 'e.g. ' + dry.sample_ids.join(', ') : '' });
  if (!ok) return;
  await act(async () => {
    const params = Object.assign({ queue: p.dlq, async: 'true', max: dry.matched }, p.filter);
    if (ok.rate) params.rate = ok.rate;
    const r = await api('POST', '/api/system/dlq/requeue?' + q(params));
    p.task = { id: r.task_id, expected: dry.matched };
    watchTask(p);
    return `Started task ${r.task_id}.`;
  });
}

async function watchTask(p) {
  const t = p.task;
  if (!t || t.watching) return;
  t.watching = true;
  const box = $('.task', p.node);
  box.hidden = false;
  for (;;) {
    let v;
    try { v = await api('GET', '/api/system/dlq/tasks/' + t.id); } catch (e) { showError(e.message); break; }
    const bar = $('progress', box);
    if (t.expected) { bar.max = t.expected; bar.value = Math.min(v.moved + v.skipped_malformed, t.expected); }
    else bar.removeAttribute('value');
    $('.task-text', box).textContent = `${v.state}: ${v.moved} moved` + (v.skipped_malformed ? `, ${v.skipped_malformed} malformed skipped` : '')
      + `, ${v.remaining_to_scan} left to scan` + (v.rate ? ` at ${v.rate}/s` : '');
    $('.task-cancel', box).hidden = v.state !== 'running';
    if (v.state !== 'running') { say(`Task ${t.id} ${v.state}: ${v.moved} jobs moved.`); break; }
    await new Promise((r) => setTimeout(r, 1000));
  }
  p.task = null;
  await refresh();
}

async function cancelTask(p) {
  if (!p.task) return;
  await act(async () => { await api('DELETE', '/api/system/dlq/tasks/' + p.task.id); return 'Cancel requested.'; });
}

// --- refresh -------------------------------------------------------------

async function loadAudit() {
  if (!$('#audit').open) return;
  const r = await api('GET', '/api/system/dlq/audit?limit=50');
  $('#audit-rows').replaceChildren(...r.rows.map((a) => el('tr', {},
    el('td', { text: fmtTime(a.at) }), el('td', { text: a.actor }), el('td', { text: a.action }),
    el('td', { text: a.queue }), el('td', { text: JSON.stringify(Object.assign({}, a.counts, a.archive_key ? { archive: a.archive_key } : {}, a.task_id ? { task: a.task_id } : {})) }))));
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  try {
    const [counts, stats, tasks] = await Promise.all([
      api('GET', '/api/system/dlq/stats'), api('GET', '/api/system/stats'), api('GET', '/api/system/dlq/tasks')]);
    const views = stats.dlq && stats.dlq.queues ? stats.dlq.queues : [];
    if (!views.length) say('Waiting for the first queue poll…');
    for (const v of views) {
      let p = panels.get(v.queue);
      if (!p) { p = makePanel(v); panels.set(v.queue, p); }
      const n = counts[v.queue + '_count'];
      updatePanel(p, v, typeof n === 'number' ? n : v.dlq_depth);
      const running = tasks.find((t) => t.state === 'running' && t.queue_name === p.dlq);
      if (running && !p.task) { p.task = { id: running.task_id, expected: null }; watchTask(p); }
      if (p.node.open) await loadJobs(p);
    }
    const total = counts.total_count;
    $('#total').textContent = String(total);
    $('.badge').classList.toggle('zero', total === 0);
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    await loadAudit();
  } catch (e) {
    showError(e instanceof ApiError ? e.message : 'Cannot reach the daemon: ' + e.message);
  } finally {
    refreshing = false;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('#refresh').addEventListener('click', () => { showError(''); refresh(); });
  $('#audit').addEventListener('toggle', () => loadAudit().catch((e) => showError(e.message)));
  refresh();
  setInterval(() => { if (!anyDialogOpen() && !document.hidden) refresh(); }, REFRESH_MS);
});
