// Builds DOM nodes without ever parsing markup: text always goes in as text nodes, attributes
// through setAttribute, events through addEventListener. Every stored value is hostile input.

const SVG_NS = 'http://www.w3.org/2000/svg';
const URL_ATTRS = new Set(['href', 'src', 'action', 'xlink:href']);

// Same-origin paths (never protocol-relative "//" or "/\"), fragments, queries, or http(s) URLs.
export function safeUrl(u) {
  return (u.startsWith('/') && !/^\/[/\\]/.test(u)) || u.startsWith('#') || u.startsWith('?') ||
    /^https?:\/\/[^/\\]/i.test(u);
}

function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'on') {
      for (const [event, fn] of Object.entries(v)) node.addEventListener(event, fn);
      continue;
    }
    if (/^on/i.test(k)) throw new Error(`handler attribute ${k}: use on: {...}`);
    if (URL_ATTRS.has(k) && !safeUrl(String(v))) throw new Error(`refusing URL in ${k}`);
    node.setAttribute(k, v === true ? '' : String(v));
  }
  return append(node, children);
}

export function append(node, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// An HTML element: h('a', {href: '/ui/'}, 'text', child, [more]).
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// An SVG element, same calling convention.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function replace(node, ...children) {
  return append(clear(node), children);
}
