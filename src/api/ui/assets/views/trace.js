// Trace: every attempt of one trace on a timeline; per attempt its request and response
// payloads (collapsible JSON, redactions and truncation marked), error, HTTP method, target and
// status, and the n8n execution (linked into n8n when admin.n8n_execution_url is set); then what
// changed between consecutive attempts. Reads GET /api/traces/{id} and /api/traces/{id}/diff.

import { h, s, replace } from '../dom.js';
import { get, enc, qs } from '../api.js';
import { time, status, duration, link, to, n8nLink } from '../format.js';
import { panel, facts } from '../widgets.js';
import { jsonTree, inline, isRedacted } from '../json.js';

const W = 640;
const ROW = 26;

// A bar's duration: right of it, else left of it, else inside it at its end.
function barLabel(x0, width, left, y, text) {
  const room = 80;
  if (x0 + width + room <= W) return s('text', { x: x0 + width + 4, y, class: 'tl-value' }, text);
  if (x0 - room >= left) return s('text', { x: x0 - 4, y, class: 'tl-value', 'text-anchor': 'end' }, text);
  return s('text', { x: x0 + width - 4, y, class: 'tl-value tl-inside', 'text-anchor': 'end' }, text);
}

// Attempts as bars on one time axis: where each started and how long it took.
function timeline(items) {
  const start = (r) => Date.parse(r.requestedAt);
  // The stored duration, so each bar matches its label; the response time when there is none.
  const end = (r) => (r.durationMs !== null && r.durationMs !== undefined
    ? start(r) + r.durationMs
    : (r.respondedAt ? Date.parse(r.respondedAt) : start(r)));
  const t0 = Math.min(...items.map(start));
  const t1 = Math.max(...items.map(end), t0 + 1);
  const left = 90;
  const span = W - left - 10;
  const x = (t) => left + (span * (t - t0)) / (t1 - t0);
  const height = items.length * ROW + 24;
  const svg = s('svg', { viewBox: `0 0 ${W} ${height}`, role: 'img', 'aria-label': `${items.length} attempts over ${t1 - t0} ms` },
    s('title', {}, 'Attempts on a timeline'));
  items.forEach((r, i) => {
    const y = i * ROW + 4;
    const x0 = x(start(r));
    const width = Math.max(3, x(end(r)) - x0);
    const label = `attempt ${r.attemptNumber}: ${r.overallStatus}${r.errorCode ? ` ${r.errorCode}` : ''}, ${duration(r.durationMs)}`;
    svg.appendChild(s('a', { href: `#attempt-${r.attemptNumber}`, 'aria-label': label },
      s('title', {}, label),
      s('text', { x: 4, y: y + 14, class: 'tl-label' }, `#${r.attemptNumber}`),
      s('rect', { x: x0, y, width, height: ROW - 8, class: `tl-bar status-${r.overallStatus}` }),
      barLabel(x0, width, left, y + 15, duration(r.durationMs))));
  });
  svg.appendChild(s('text', { x: left, y: height - 4, class: 'tl-axis' }, '0 ms'));
  svg.appendChild(s('text', { x: W - 10, y: height - 4, class: 'tl-axis', 'text-anchor': 'end' }, `+${duration(t1 - t0)}`));
  return h('figure', { class: 'chart timeline' }, svg);
}

function payload(title, value, open) {
  const d = h('details', { class: 'payload' }, h('summary', {}, title), jsonTree(value));
  d.open = open;
  return d;
}

function attempt(r, session) {
  const n8n = n8nLink(session.n8nExecutionUrl, r.n8nExecutionId, r.workflowId);
  const execution = r.n8nExecutionId
    ? (n8n ? h('a', { href: n8n, target: '_blank', rel: 'noopener noreferrer', class: 'n8n-link' }, r.n8nExecutionId, ' ↗') : r.n8nExecutionId)
    : null;
  return h('section', { class: `attempt attempt-${r.overallStatus}`, id: `attempt-${r.attemptNumber}`, tabindex: '-1' },
    h('h3', {}, `Attempt ${r.attemptNumber} `, status(r.overallStatus), r.errorCode ? h('span', { class: 'code' }, r.errorCode) : null),
    facts([
      ['Request', r.httpMethod || r.httpTarget
        ? h('span', { class: isRedacted(r.httpTarget) ? 'redacted' : null }, h('span', { class: 'method' }, r.httpMethod || ''), ' ', r.httpTarget || '')
        : null],
      ['HTTP status', r.httpStatus === null || r.httpStatus === undefined ? 'none received' : String(r.httpStatus)],
      ['Requested', time(r.requestedAt)],
      ['Responded', time(r.respondedAt)],
      ['Duration', duration(r.durationMs)],
      ['Error', r.errorCode ? h('span', {}, h('span', { class: 'code' }, r.errorCode), ' ', r.errorDetail || '') : null],
      ['n8n execution', execution],
      ['Route', `${r.sourceService} → ${r.destinationService}`],
      ['Action', r.action],
      ['Row id', h('code', {}, r.id)],
    ]),
    payload('Request payload', r.requestPayload, true),
    payload('Response payload', r.responsePayload, r.overallStatus === 'failed'));
}

function change(c) {
  const path = h('code', { class: 'diff-path' }, c.path || '(whole payload)');
  if (c.op === 'added') return h('li', { class: 'diff-added' }, h('span', { class: 'op', 'aria-label': 'added' }, '+'), path, ' ', h('ins', {}, inline(c.value)));
  if (c.op === 'removed') return h('li', { class: 'diff-removed' }, h('span', { class: 'op', 'aria-label': 'removed' }, '−'), path, ' ', h('del', {}, inline(c.old)));
  return h('li', { class: 'diff-changed' }, h('span', { class: 'op', 'aria-label': 'changed' }, '~'), path, ' ',
    h('del', {}, inline(c.old)), ' → ', h('ins', {}, inline(c.new)));
}

function fieldChange(name, c, fmt = (v) => (v === null ? 'none' : String(v))) {
  if (!c) return null;
  return h('li', { class: 'diff-changed' }, h('span', { class: 'op', 'aria-label': 'changed' }, '~'), h('span', { class: 'diff-field' }, name), ' ',
    h('del', {}, fmt(c.old)), ' → ', h('ins', {}, fmt(c.new)));
}

function diffs(body) {
  if (!body.items.length) return h('p', { class: 'empty' }, 'One attempt only: nothing to compare.');
  return h('div', { class: 'diffs' }, body.items.map((d) => {
    const lines = [
      fieldChange('status', d.overallStatus),
      fieldChange('error code', d.errorCode),
      fieldChange('duration', d.durationMs, (v) => duration(v)),
      ...d.request.map(change),
    ].filter(Boolean);
    return h('section', { class: 'diff', 'data-from': d.fromAttempt, 'data-to': d.toAttempt },
      h('h3', {}, `Attempt ${d.fromAttempt} → ${d.toAttempt}`),
      lines.length ? h('ul', { class: 'diff-list' }, lines) : h('p', { class: 'muted' }, 'Identical request payload, status, error code and duration.'));
  }));
}

export default async function trace(main, { id, session }) {
  const [chain, diff] = await Promise.all([
    get(`/api/traces/${enc(id)}${qs({ fields: '*', payloads: 'full' })}`),
    get(`/api/traces/${enc(id)}/diff${qs({ payloads: 'full' })}`),
  ]);
  const items = chain.body.items;
  const last = items[items.length - 1];
  const first = items[0];
  replace(main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Trace ', h('code', { class: 'trace-id' }, id)),
      last ? status(last.overallStatus) : null),
    facts([
      ['Attempts', `${items.length}${chain.body.hasMore ? '+' : ''}`],
      ['Workflow', first ? to(link.workflow(first.workflowId), first.workflowId) : null],
      ['User', first ? to(link.user(first.userId), first.userId) : null],
      ['Execution', first && first.executionId ? to(link.execution(first.executionId), first.executionId) : null],
      ['Started', first ? time(first.requestedAt) : null],
    ]),
    chain.body.truncated ? h('p', { class: 'error' }, chain.body.truncatedReason) : null,
    panel('Attempts', chain, timeline(items), items.map((r) => attempt(r, session))),
    panel('What changed between attempts', diff, diffs(diff.body)));
  if (location.hash) {
    const target = document.getElementById(location.hash.slice(1));
    if (target) target.scrollIntoView();
  }
}
