// User: everything one user's requests did, newest first. Reads GET /api/users/{id}/history.

import { h, replace } from '../dom.js';
import { get, enc, qs } from '../api.js';
import { link } from '../format.js';
import { panel, pager } from '../widgets.js';
import { attemptTable } from '../rows.js';

export default async function user(main, { id, params }) {
  const cursor = params.get('cursor') || '';
  const res = await get(`/api/users/${enc(id)}/history${qs({ limit: 50, cursor, fields: '*', payloads: 'none' })}`);
  replace(main,
    h('h1', {}, 'User ', h('code', {}, id)),
    h('p', {}, h('a', { href: link.traces({ userId: id, status: 'failed' }) }, 'Failures of this user')),
    panel('History', res,
      attemptTable(res.body.items, { omit: ['User'], empty: 'No attempts by this user.', caption: 'History, newest first' }),
      pager(res.body, (c) => `${link.user(id)}${qs({ cursor: c || '' })}`, Boolean(cursor))));
}
