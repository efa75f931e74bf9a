// Small SVG charts of the overview's buckets: bars (requests, failures stacked) and lines
// (failure rate, p50/p95 duration). Each bar links to the traces of its bucket; every label is
// text, every shape built with createElementNS.

import { s, h } from './dom.js';
import { shortTime } from './format.js';

const W = 640;
const H = 180;
const PAD = { left: 70, right: 10, top: 12, bottom: 28 };

function axes(max, format, buckets) {
  const ih = H - PAD.top - PAD.bottom;
  const g = s('g', { class: 'axes' });
  for (const f of [0, 0.5, 1]) {
    const y = PAD.top + ih * (1 - f);
    g.appendChild(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid' }));
    g.appendChild(s('text', { x: PAD.left - 6, y: y + 6, 'text-anchor': 'end' }, format(max * f)));
  }
  if (buckets.length) {
    const first = new Date(buckets[0].start);
    const last = new Date(buckets[buckets.length - 1].start);
    const withDate = last - first > 20 * 3600 * 1000;
    const iw = W - PAD.left - PAD.right;
    for (const [i, anchor] of [[0, 'start'], [Math.floor(buckets.length / 2), 'middle'], [buckets.length - 1, 'end']]) {
      const x = PAD.left + (iw * (i + 0.5)) / buckets.length;
      g.appendChild(s('text', { x, y: H - 6, 'text-anchor': anchor }, shortTime(new Date(buckets[i].start), withDate)));
    }
  }
  return g;
}

function frame(title, desc, ...content) {
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${desc}` }, s('title', {}, title), content),
    h('figcaption', {}, title));
}

// bars: [{value: b => n, class}] stacked from the bottom; href(b) links a bucket's bars.
export function barChart(title, buckets, bars, { format = String, href, tip } = {}) {
  const iw = W - PAD.left - PAD.right;
  const ih = H - PAD.top - PAD.bottom;
  const max = Math.max(1, ...buckets.map((b) => bars.reduce((n, bar) => n + (bar.value(b) || 0), 0)));
  const bw = iw / Math.max(1, buckets.length);
  const g = s('g', {});
  buckets.forEach((b, i) => {
    let y = PAD.top + ih;
    const shapes = [];
    for (const bar of bars) {
      const v = bar.value(b) || 0;
      if (!v) continue;
      const bh = (ih * v) / max;
      y -= bh;
      shapes.push(s('rect', { x: PAD.left + i * bw + bw * 0.1, y, width: Math.max(1, bw * 0.8), height: bh, class: bar.class }));
    }
    if (!shapes.length) return;
    const label = tip ? tip(b) : '';
    const group = href ? s('a', { href: href(b), 'aria-label': label }) : s('g', {});
    group.appendChild(s('title', {}, label));
    for (const shape of shapes) group.appendChild(shape);
    g.appendChild(group);
  });
  const total = buckets.reduce((n, b) => n + (bars[0].value(b) || 0), 0);
  return frame(title, `${buckets.length} buckets, ${total} in all`, axes(max, format, buckets), g);
}

// lines: [{value: b => number|null, class, name}]; gaps where a bucket has no value.
export function lineChart(title, buckets, lines, { format = String, max: fixedMax } = {}) {
  const iw = W - PAD.left - PAD.right;
  const ih = H - PAD.top - PAD.bottom;
  const values = buckets.flatMap((b) => lines.map((l) => l.value(b))).filter((v) => v !== null && v !== undefined);
  const max = fixedMax ?? Math.max(1, ...values);
  const bw = iw / Math.max(1, buckets.length);
  const g = s('g', {});
  for (const line of lines) {
    let d = '';
    const value = (i) => (i >= 0 && i < buckets.length ? line.value(buckets[i]) : null);
    buckets.forEach((b, i) => {
      const v = value(i);
      if (v === null || v === undefined) return;
      const x = (PAD.left + i * bw + bw / 2).toFixed(1);
      const y = (PAD.top + ih * (1 - Math.min(v, max) / max)).toFixed(1);
      const before = value(i - 1);
      const after = value(i + 1);
      d += `${before === null || before === undefined ? 'M' : 'L'}${x} ${y} `;
      // A value with no neighbour draws no line: mark it with a dot.
      if ((before === null || before === undefined) && (after === null || after === undefined)) {
        g.appendChild(s('circle', { cx: x, cy: y, r: 4, class: `dot ${line.class}` }, s('title', {}, `${line.name}: ${format(v)}`)));
      }
    });
    if (d) g.appendChild(s('path', { d: d.trim(), class: `line ${line.class}` }, s('title', {}, line.name)));
  }
  const legend = h('ul', { class: 'legend' }, lines.map((l) => h('li', { class: l.class }, l.name)));
  const fig = frame(title, lines.map((l) => l.name).join(', '), axes(max, format, buckets), g);
  fig.appendChild(legend);
  return fig;
}
