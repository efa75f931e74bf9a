// Overview: the last hour, day or week in buckets (requests and failures, failure rate, p50/p95
// duration), the top failing workflows and error codes, and what is unfinished now.
// Reads GET /api/overview.

import { h, replace } from '../dom.js';
import { get, qs } from '../api.js';
import { barChart, lineChart } from '../chart.js';
import { count, pct, duration, link, to, localTime, time } from '../format.js';
import { panel, table, facts } from '../widgets.js';

export const WINDOWS = ['hour', 'day', 'week'];

export function windowOf(params) {
  const w = params.get('window');
  return WINDOWS.includes(w) ? w : 'day';
}

// Links to the same page for each window.
export function windowTabs(current, hrefFor) {
  return h('nav', { class: 'tabs', 'aria-label': 'Time window' },
    WINDOWS.map((w) => h('a', { href: hrefFor(w), 'aria-current': w === current ? 'page' : null }, `Last ${w}`)));
}

function bucketEnd(b, seconds) {
  return new Date(new Date(b.start).getTime() + seconds * 1000).toISOString();
}

// The three charts of an overview answer; bars link to the traces of their bucket.
export function charts(body, filter = {}) {
  const secs = body.bucketSeconds;
  const tracesOf = (b) => link.traces({ ...filter, since: b.start, until: bucketEnd(b, secs) });
  const tip = (b) => `${localTime(new Date(b.start))}: ${b.count} requests, ${b.failed} failed`;
  return h('div', { class: 'charts' },
    barChart('Requests (failed in red)', body.buckets, [
      { value: (b) => b.count - b.failed, class: 'bar-ok' },
      { value: (b) => b.failed, class: 'bar-failed' },
    ], { format: (v) => count(Math.round(v)), href: tracesOf, tip }),
    lineChart('Failure rate', body.buckets, [
      { value: (b) => b.failureRate, class: 'line-failed', name: 'failed / finished' },
    ], { format: (v) => pct(v), max: Math.max(0.05, ...body.buckets.map((b) => b.failureRate || 0)) }),
    lineChart('Duration', body.buckets, [
      { value: (b) => b.p50DurationMs, class: 'line-p50', name: 'p50' },
      { value: (b) => b.p95DurationMs, class: 'line-p95', name: 'p95' },
    ], { format: (v) => duration(Math.round(v)), max: Math.max(10, ...body.buckets.map((b) => b.p95DurationMs || 0)) }));
}

export function totals(body) {
  const t = body.totals;
  return h('div', { class: 'cards' },
    card('Requests', count(t.count)),
    card('Failure rate', pct(t.failureRate), `${count(t.failed)} failed`),
    card('p50 duration', duration(t.p50DurationMs)),
    card('p95 duration', duration(t.p95DurationMs)));
}

function card(label, value, sub) {
  return h('div', { class: 'card' }, h('div', { class: 'card-label' }, label), h('div', { class: 'card-value' }, value),
    sub ? h('div', { class: 'card-sub muted' }, sub) : null);
}

export function errorCodes(body, filter = {}) {
  return table([
    { title: 'Error code', cell: (r) => to(link.traces({ ...filter, errorCode: r.key, since: body.since }), r.key) },
    { title: 'Failed', class: 'num', cell: (r) => count(r.failed) },
  ], body.topErrorCodes, { empty: 'No failures in this window.', caption: 'Top error codes' });
}

export default async function overview(main, { params }) {
  const w = windowOf(params);
  const res = await get(`/api/overview${qs({ window: w })}`);
  const body = res.body;
  const u = body.unfinishedNow;
  replace(main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Overview'), windowTabs(w, (x) => `/ui/${qs({ window: x })}`)),
    h('p', { class: 'muted' }, 'From ', time(body.since), ' to ', time(body.until), ` in ${body.buckets.length} buckets, read at `, time(body.generatedAt), '.'),
    panel(`Last ${w}`, res, totals(body), charts(body)),
    h('div', { class: 'two' },
      panel('Top failing workflows', null, table([
        { title: 'Workflow', cell: (r) => to(link.workflow(r.key), r.key) },
        { title: 'Failed', class: 'num', cell: (r) => count(r.failed) },
        { title: 'of', class: 'num', cell: (r) => count(r.count) },
        { title: 'Rate', class: 'num', cell: (r) => pct(r.count ? r.failed / r.count : null) },
        { title: '', cell: (r) => h('a', { href: link.traces({ workflowId: r.key, status: 'failed' }) }, 'failures') },
      ], body.topFailingWorkflows, { empty: 'No failures in this window.', caption: 'Top failing workflows' })),
      panel('Top error codes', null, errorCodes(body))),
    panel('Unfinished now', null, facts([
      ['Pending', h('a', { href: link.traces({ status: 'pending' }) }, count(u.pending))],
      ['In progress', h('a', { href: link.traces({ status: 'in_progress' }) }, count(u.inProgress))],
      ['Oldest started', u.oldestRequestedAt ? time(u.oldestRequestedAt) : null],
    ])));
}
