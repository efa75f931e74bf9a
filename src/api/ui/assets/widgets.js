// The pieces every view is made of: a panel with its API call and "copy as JSON", tables,
// pagers, key/value lists and error boxes.

import { h, append } from './dom.js';

// Copies text to the clipboard; where the Clipboard API is unavailable (plain HTTP on a
// non-loopback address is not a secure context), through a selected, hidden textarea.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through
    }
  }
  const area = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
  area.value = text;
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

// "Copy JSON" for one API answer, plus the link to the call itself.
export function apiActions(result) {
  const note = h('span', { class: 'copy-note', role: 'status', 'aria-live': 'polite' });
  const button = h('button', {
    type: 'button',
    class: 'copy',
    'data-api': result.path,
    on: {
      click: async () => {
        const ok = await copyText(result.text);
        note.textContent = ok ? 'Copied' : 'Copy failed: open the API link';
      },
    },
  }, 'Copy JSON');
  return h('div', { class: 'api-actions' },
    button,
    h('a', { class: 'api-link', href: result.path, target: '_blank', rel: 'noopener noreferrer' }, result.path),
    note);
}

// A titled section; `result` (an api.get answer) adds its copy button and API link.
export function panel(title, result, ...content) {
  return h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', {}, title), result ? apiActions(result) : null),
    content);
}

// columns: [{title, cell: row => node|string, class?}]
export function table(columns, rows, { empty = 'Nothing here.', caption, rowAttrs } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  const { wrap, tbody } = tableShell(columns, caption);
  for (const row of rows) tbody.appendChild(tableRow(columns, row, rowAttrs));
  return wrap;
}

// A table with its head and an empty body, for rows added later.
export function tableShell(columns, caption) {
  const tbody = h('tbody', {});
  const wrap = h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption || 'table' },
    h('table', {},
      caption ? h('caption', { class: 'offscreen' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.title)))),
      tbody));
  return { wrap, tbody };
}

export function tableRow(columns, row, rowAttrs) {
  return h('tr', rowAttrs ? rowAttrs(row) : {}, columns.map((c) => h('td', { class: c.class }, c.cell(row))));
}

// A definition list of [term, value] pairs; null values are left out.
export function facts(pairs) {
  const dl = h('dl', { class: 'facts' });
  for (const [k, v] of pairs) {
    if (v === null || v === undefined) continue;
    append(dl, [h('dt', {}, k), h('dd', {}, v)]);
  }
  return dl;
}

export function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' },
    h('strong', {}, e && e.code ? `${e.code}: ` : 'Error: '),
    String(e && e.message ? e.message : e));
}

// Newest/older links for a keyset-paginated answer; `href(cursor)` builds the page URL.
export function pager(body, href, hasCursor) {
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    hasCursor ? h('a', { href: href(null), class: 'button' }, '← Newest') : null,
    h('span', { class: 'muted' }, `${body.count} shown${body.truncated ? ' (cut to the response budget)' : ''}`),
    body.nextCursor ? h('a', { href: href(body.nextCursor), class: 'button', rel: 'next' }, 'Older →') : null);
}
