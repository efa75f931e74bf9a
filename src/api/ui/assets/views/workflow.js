// Workflow: its recent failures, error-code breakdown, duration percentiles and trend over the
// last hour, day or week. Reads GET /api/overview?workflowId= and
// /api/workflows/{id}/failures.

import { h, replace } from '../dom.js';
import { get, enc, qs } from '../api.js';
import { link, time } from '../format.js';
import { panel, pager } from '../widgets.js';
import { attemptTable } from '../rows.js';
import { charts, totals, errorCodes, windowOf, windowTabs } from './overview.js';

export default async function workflow(main, { id, params }) {
  const w = windowOf(params);
  const cursor = params.get('cursor') || '';
  const [over, failures] = await Promise.all([
    get(`/api/overview${qs({ window: w, workflowId: id })}`),
    get(`/api/workflows/${enc(id)}/failures${qs({ limit: 20, cursor, fields: '*', payloads: 'none' })}`),
  ]);
  const self = (extra) => `${link.workflow(id)}${qs({ window: w, ...extra })}`;
  replace(main,
    h('div', { class: 'page-head' },
      h('h1', {}, 'Workflow ', h('code', {}, id)),
      windowTabs(w, (x) => `${link.workflow(id)}${qs({ window: x })}`)),
    h('p', {}, h('a', { href: link.traces({ workflowId: id }) }, 'All attempts of this workflow'), ' · from ', time(over.body.since), ' to ', time(over.body.until)),
    panel(`Trend, last ${w}`, over, totals(over.body), charts(over.body, { workflowId: id })),
    panel('Error codes', null, errorCodes(over.body, { workflowId: id })),
    panel('Recent failures', failures,
      attemptTable(failures.body.items, { omit: ['Workflow'], empty: 'No failed attempts.', caption: 'Recent failures' }),
      pager(failures.body, (c) => self({ cursor: c || '' }), Boolean(cursor))));
}
