// Stored payloads as a collapsible tree (<details>, so it opens and closes with the keyboard),
// with redaction markers and truncation indicators made visible. Every key and value is text.

import { h } from './dom.js';

// The default replacement of the sanitizer (sanitize.replacement), and its URL-encoded form
// (redacted query parameters in http_target).
const MARKERS = ['[REDACTED]', '%5BREDACTED%5D'];

export function isRedacted(s) {
  return typeof s === 'string' && MARKERS.some((m) => s.includes(m));
}

function keyLabel(key, inArray) {
  if (key === undefined) return null;
  return [h('span', { class: inArray ? 'j-index' : 'j-key' }, inArray ? String(key) : JSON.stringify(key)), ': '];
}

function scalar(v) {
  if (typeof v === 'string') {
    const red = isRedacted(v);
    return h('span', { class: red ? 'j-str redacted' : 'j-str', title: red ? 'redacted before storage' : null },
      JSON.stringify(v));
  }
  if (v === null) return h('span', { class: 'j-null' }, 'null');
  return h('span', { class: `j-${typeof v}` }, String(v));
}

// The note an object carrying a truncation indicator gets (`_truncated` from capture, or
// `_omitted` from the API's response budget).
function truncationNote(obj) {
  const t = obj._truncated;
  const o = obj._omitted;
  const info = t && typeof t === 'object' ? t : o && typeof o === 'object' ? o : null;
  if (!info && t === undefined) return null;
  const parts = [];
  if (info) {
    if (info.kind) parts.push(String(info.kind));
    if (info.original_bytes !== undefined) parts.push(`original ${Number(info.original_bytes).toLocaleString('en-US')} bytes`);
    if (info.limit_bytes !== undefined) parts.push(`limit ${Number(info.limit_bytes).toLocaleString('en-US')} bytes`);
    if (info.by) parts.push(`cut by ${info.by}`);
    if (info.reason) parts.push(String(info.reason));
  }
  return h('div', { class: 'trunc-note', role: 'note' },
    h('span', { class: 'flag flag-trunc' }, o && !t ? 'omitted' : 'truncated'),
    parts.length ? ` ${parts.join(' · ')}` : '');
}

function node(key, value, depth, inArray, openDepth) {
  if (value === null || typeof value !== 'object') {
    return h('div', { class: 'j-leaf' }, keyLabel(key, inArray), scalar(value));
  }
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
  const note = isArray ? null : truncationNote(value);
  const redactedInside = JSON.stringify(value).includes('REDACTED');
  const details = h('details', { class: note ? 'j-node truncated' : 'j-node' });
  details.open = depth < openDepth && entries.length <= 200;
  details.appendChild(h('summary', {},
    keyLabel(key, inArray),
    h('span', { class: 'j-shape' }, isArray ? `[${entries.length}]` : `{${entries.length}}`),
    note ? h('span', { class: 'flag flag-trunc' }, 'truncated') : null,
    redactedInside ? h('span', { class: 'flag flag-red' }, 'redactions') : null));
  if (note) details.appendChild(note);
  const list = h('div', { class: 'j-children' });
  for (const [k, v] of entries) list.appendChild(node(k, v, depth + 1, isArray, openDepth));
  details.appendChild(list);
  return details;
}

// The tree of one JSON value; objects and arrays are open to `openDepth` levels.
export function jsonTree(value, { openDepth = 3 } = {}) {
  if (value === undefined) return h('p', { class: 'muted' }, 'not returned');
  if (value === null) return h('p', { class: 'muted' }, 'nothing stored');
  return h('div', { class: 'json' }, node(undefined, value, 0, false, openDepth));
}

// A value on one line (for diffs and tables), cut for display only.
export function inline(value, max = 400) {
  const text = value === undefined ? 'undefined' : JSON.stringify(value);
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return h('code', { class: isRedacted(text) ? 'j-inline redacted' : 'j-inline', title: text.length > max ? `${text.length} characters` : null }, cut);
}
