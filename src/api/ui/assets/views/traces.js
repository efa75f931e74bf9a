// Traces: every attempt, newest first, filtered by status, workflow, user, destination, error
// code and time range (all in the URL), keyset-paged, with a live tail that adds the requests
// arriving after the page opened. Reads GET /api/traces.

import { h, replace } from '../dom.js';
import { get, qs } from '../api.js';
import { localTime } from '../format.js';
import { panel, pager } from '../widgets.js';
import { attemptRow, attemptTableShell } from '../rows.js';

const FILTERS = ['status', 'workflowId', 'userId', 'destination', 'errorCode', 'since', 'until'];
const STATUSES = ['', 'pending', 'in_progress', 'success', 'failed'];
const TAIL_EVERY_MS = 2000;

const pad = (n) => String(n).padStart(2, '0');

// An RFC 3339 time as a datetime-local value in the viewer's zone, and back.
function toLocalInput(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fromLocalInput(v) {
  const d = new Date(v);
  return !v || Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function filtersOf(params) {
  const f = {};
  for (const k of FILTERS) if (params.get(k)) f[k] = params.get(k);
  return f;
}

function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

function filterForm(f, limit) {
  const text = (name, placeholder) => h('input', { name, type: 'text', value: f[name] || '', placeholder, autocomplete: 'off' });
  const status = h('select', { name: 'status' }, STATUSES.map((s) => h('option', { value: s, selected: (f.status || '') === s }, s ? s.replace('_', ' ') : 'any')));
  const since = h('input', { name: 'since', type: 'datetime-local', step: '1', value: toLocalInput(f.since) });
  const until = h('input', { name: 'until', type: 'datetime-local', step: '1', value: toLocalInput(f.until) });
  const form = h('form', {
    class: 'filters',
    role: 'search',
    action: '/ui/traces',
    method: 'get',
    on: {
      submit: (ev) => {
        ev.preventDefault();
        const data = new FormData(form);
        const next = {};
        for (const k of FILTERS) next[k] = String(data.get(k) || '').trim();
        next.since = fromLocalInput(next.since);
        next.until = fromLocalInput(next.until);
        next.limit = limit;
        location.assign(`/ui/traces${qs(next)}`);
      },
    },
  },
  field('Status', status),
  field('Workflow', text('workflowId', 'workflow id')),
  field('User', text('userId', 'user id')),
  field('Destination', text('destination', 'e.g. n8n')),
  field('Error code', text('errorCode', 'e.g. HTTP_503')),
  field('Since', since),
  field('Until', until),
  h('div', { class: 'filter-actions' },
    h('button', { type: 'submit' }, 'Apply'),
    h('a', { href: '/ui/traces', class: 'button secondary' }, 'Clear')));
  return form;
}

// Polls for attempts requested since `from` matching the filters; new ones go on top, known
// ones are refreshed in place (a pending attempt turns final).
function liveTail(tbody, known, f, from, status, onAdd) {
  let timer = null;
  const poll = async () => {
    try {
      const since = f.since && f.since > from ? f.since : from;
      const res = await get(`/api/traces${qs({ ...f, since, limit: 100, fields: '*', payloads: 'none' })}`);
      const items = res.body.items;
      let added = 0;
      for (let i = items.length - 1; i >= 0; i -= 1) {
        const r = items[i];
        const row = attemptRow(r);
        const old = known.get(r.id);
        if (old) {
          if (old.classList.contains('fresh')) row.classList.add('fresh');
          old.replaceWith(row);
        } else {
          row.classList.add('fresh');
          tbody.insertBefore(row, tbody.firstChild);
          added += 1;
        }
        known.set(r.id, row);
      }
      if (added) onAdd();
      status.textContent = `Live: checked ${localTime(new Date())}${added ? `, ${added} new` : ''}.`;
    } catch (e) {
      status.textContent = `Live tail paused: ${e.message}`;
      return;
    }
    timer = setTimeout(poll, TAIL_EVERY_MS);
  };
  poll();
  return () => clearTimeout(timer);
}

export default async function traces(main, { params }) {
  const f = filtersOf(params);
  const limit = params.get('limit') || '';
  const cursor = params.get('cursor') || '';
  const res = await get(`/api/traces${qs({ ...f, limit, cursor, fields: '*', payloads: 'none' })}`);
  // The server's clock says when the page opened (rows carry the server's times); the second
  // before is included too, and rows already shown are recognised by id.
  const opened = new Date(res.date ? Date.parse(res.date) - 1000 : Date.now() - 1000).toISOString();
  const items = res.body.items;
  const { wrap, tbody } = attemptTableShell('Attempts, newest first');
  const known = new Map();
  for (const r of items) {
    const tr = attemptRow(r);
    tbody.appendChild(tr);
    known.set(r.id, tr);
  }
  wrap.hidden = !items.length;
  const empty = h('p', { class: 'empty', hidden: items.length > 0 }, 'No attempts match these filters.');

  const tailStatus = h('span', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const canTail = !cursor && !f.until;
  const tailBox = h('input', { type: 'checkbox', id: 'live-tail', disabled: !canTail, checked: canTail && params.get('tail') === '1' });
  let stop = null;
  const setTail = (on) => {
    if (stop) stop();
    stop = null;
    const p = new URLSearchParams(location.search);
    if (on) p.set('tail', '1');
    else p.delete('tail');
    const q = p.toString();
    history.replaceState(null, '', `/ui/traces${q ? `?${q}` : ''}`);
    tailStatus.textContent = '';
    if (on) {
      stop = liveTail(tbody, known, f, opened, tailStatus, () => {
        wrap.hidden = false;
        empty.hidden = true;
      });
    }
  };
  tailBox.addEventListener('change', () => setTail(tailBox.checked));

  const pageHref = (c) => `/ui/traces${qs({ ...f, limit, cursor: c || '' })}`;
  replace(main,
    h('h1', {}, 'Traces'),
    filterForm(f, limit),
    panel('Attempts', res,
      h('div', { class: 'tail' },
        h('label', { for: 'live-tail' }, tailBox, ' Live tail'),
        ' ', tailStatus,
        canTail ? null : h('span', { class: 'muted' }, ' (on the newest page without "until" only)')),
      empty,
      wrap,
      pager(res.body, pageHref, Boolean(cursor))));
  if (tailBox.checked) setTail(true);
}
