// The table of attempts every list view shows (traces, a user's history, an execution, a
// workflow's failures): one row per stored attempt, linking to its trace, workflow and user.

import { h } from './dom.js';
import { time, status, duration, link, to } from './format.js';
import { table, tableRow, tableShell } from './widgets.js';
import { isRedacted } from './json.js';

// `omit`: column titles left out (e.g. "User" on a user's page).
export function attemptColumns(omit = []) {
  const cols = [
    { title: 'Requested', cell: (r) => h('a', { href: `${link.trace(r.traceId)}#attempt-${r.attemptNumber}` }, time(r.requestedAt)) },
    { title: 'Status', cell: (r) => status(r.overallStatus) },
    { title: '#', class: 'num', cell: (r) => String(r.attemptNumber) },
    { title: 'Workflow', cell: (r) => to(link.workflow(r.workflowId), r.workflowId) },
    { title: 'User', cell: (r) => to(link.user(r.userId), r.userId) },
    { title: 'Destination', cell: (r) => r.destinationService },
    { title: 'Request', class: 'target', cell: (r) => target(r) },
    { title: 'HTTP', class: 'num', cell: (r) => (r.httpStatus === null || r.httpStatus === undefined ? '—' : String(r.httpStatus)) },
    { title: 'Duration', class: 'num', cell: (r) => duration(r.durationMs) },
    { title: 'Error', cell: (r) => (r.errorCode ? h('span', { class: 'code', title: r.errorDetail || '' }, r.errorCode) : '') },
    { title: 'Trace', class: 'id', cell: (r) => h('a', { href: link.trace(r.traceId), title: r.traceId }, r.traceId) },
  ];
  return cols.filter((c) => !omit.includes(c.title));
}

function target(r) {
  if (!r.httpMethod && !r.httpTarget) return h('span', { class: 'muted' }, '—');
  return h('span', { class: isRedacted(r.httpTarget) ? 'redacted' : null, title: r.httpTarget || '' },
    h('span', { class: 'method' }, r.httpMethod || ''), ' ', r.httpTarget || '');
}

const rowAttrs = (r) => ({ 'data-id': r.id, 'data-trace': r.traceId });

export function attemptTable(rows, opts = {}) {
  return table(attemptColumns(opts.omit), rows, { empty: opts.empty || 'No attempts.', caption: opts.caption, rowAttrs });
}

export function attemptRow(r, opts = {}) {
  return tableRow(attemptColumns(opts.omit), r, rowAttrs);
}

// An empty attempts table, for rows added later (the live tail).
export function attemptTableShell(caption, omit = []) {
  return tableShell(attemptColumns(omit), caption);
}
