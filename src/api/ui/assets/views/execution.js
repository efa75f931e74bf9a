// Execution (DATA-004): every attempt of one bilko-app workflow execution, oldest first.
// Reads GET /api/executions/{id}/traces.

import { h, replace } from '../dom.js';
import { get, enc, qs } from '../api.js';
import { panel } from '../widgets.js';
import { attemptTable } from '../rows.js';

export default async function execution(main, { id }) {
  const res = await get(`/api/executions/${enc(id)}/traces${qs({ fields: '*', payloads: 'none' })}`);
  const traces = new Set(res.body.items.map((r) => r.traceId));
  replace(main,
    h('h1', {}, 'Execution ', h('code', {}, id)),
    h('p', { class: 'muted' }, `${res.body.count} attempts in ${traces.size} traces${res.body.hasMore ? ' (more not shown)' : ''}, oldest first.`),
    panel('Attempts', res, attemptTable(res.body.items, { caption: 'Attempts of this execution, oldest first' })));
}
