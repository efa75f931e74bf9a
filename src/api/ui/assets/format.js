// How values read on the page: times (local, with the stored UTC on hover), durations, rates,
// status badges, and the links between views.

import { h } from './dom.js';
import { enc, qs } from './api.js';

const pad = (n, w = 2) => String(n).padStart(w, '0');

// "2025-06-01 14:03:07" in the viewer's zone.
export function localTime(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A <time> showing local time; the stored UTC value is its datetime and tooltip.
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', {}, String(iso));
  return h('time', { datetime: iso, title: iso }, localTime(d));
}

export function shortTime(d, withDate) {
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return withDate ? `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}` : hm;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function pct(rate) {
  if (rate === null || rate === undefined) return '—';
  return `${(rate * 100).toFixed(rate > 0 && rate < 0.001 ? 3 : 1)}%`;
}

export function count(n) {
  return (n ?? 0).toLocaleString('en-US');
}

const STATUS_LABEL = { pending: 'pending', in_progress: 'in progress', success: 'success', failed: 'failed' };

export function status(s) {
  const known = Object.hasOwn(STATUS_LABEL, s);
  return h('span', { class: `badge status-${known ? s : 'other'}` }, known ? STATUS_LABEL[s] : String(s));
}

export const link = {
  trace: (id) => `/ui/traces/${enc(id)}`,
  traces: (params) => `/ui/traces${qs(params || {})}`,
  workflow: (id) => `/ui/workflows/${enc(id)}`,
  user: (id) => `/ui/users/${enc(id)}`,
  execution: (id) => `/ui/executions/${enc(id)}`,
};

// A link into another view, or a dash for a missing value.
export function to(href, text, attrs) {
  if (text === null || text === undefined || text === '') return h('span', { class: 'muted' }, '—');
  return h('a', { href, ...attrs }, String(text));
}

// n8n's own page for an execution, from the admin.n8n_execution_url template; null without one.
export function n8nLink(template, executionId, workflowId) {
  if (!template || !executionId) return null;
  const url = template.replaceAll('{executionId}', enc(executionId))
    .replaceAll('{workflowId}', enc(workflowId || ''));
  return /^https?:\/\//i.test(url) ? url : null;
}
