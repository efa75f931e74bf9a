// The Memory Explorer's entry point: asks the server whether it is signed in, then renders the
// view the URL names. Every view reads /api and renders what comes back; URLs carry the filters,
// so a view can be shared by its address.

import { h, replace } from './dom.js';
import { post, signInAgain } from './api.js';
import { errorBox } from './widgets.js';
import overview from './views/overview.js';
import traces from './views/traces.js';
import trace from './views/trace.js';
import workflow from './views/workflow.js';
import user from './views/user.js';
import execution from './views/execution.js';
import signin from './views/signin.js';

const ROUTES = [
  [/^\/ui\/$/, overview, 'Overview'],
  [/^\/ui\/traces$/, traces, 'Traces'],
  [/^\/ui\/traces\/([^/]+)$/, trace, 'Trace'],
  [/^\/ui\/workflows\/([^/]+)$/, workflow, 'Workflow'],
  [/^\/ui\/users\/([^/]+)$/, user, 'User'],
  [/^\/ui\/executions\/([^/]+)$/, execution, 'Execution'],
];

function disabled(main) {
  document.title = 'Sign-in disabled · Memory Explorer';
  replace(main,
    h('h1', {}, 'The Memory Explorer is not enabled'),
    h('p', {}, 'It signs in with the admin token, and this trace-proxy has none configured, so the query API and this page are turned off.'),
    h('p', {}, 'To enable both, set a token of at least 16 visible ASCII characters, then restart trace-proxy:'),
    h('pre', {}, h('code', {}, '[admin]\ntoken = "…"   # or: export TRACE_PROXY_ADMIN_TOKEN=…')),
    h('p', {}, 'Keep the admin listener on loopback or a private network: it speaks plain HTTP.'));
}

function markNav(path) {
  for (const a of document.querySelectorAll('header.top nav a')) {
    const here = a.getAttribute('href') === '/ui/' ? path === '/ui/' : path.startsWith(a.getAttribute('href'));
    if (here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function signoutButton() {
  const button = document.getElementById('signout');
  button.hidden = false;
  button.addEventListener('click', async () => {
    button.disabled = true;
    await post('/ui/signout');
    location.assign('/ui/signin');
  });
}

async function start() {
  const main = document.getElementById('main');
  const path = location.pathname;
  let session;
  try {
    const resp = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
    session = await resp.json();
  } catch (e) {
    replace(main, errorBox(e));
    return;
  }
  if (!session.tokenConfigured) {
    disabled(main);
    return;
  }
  if (path === '/ui/signin') {
    document.title = 'Sign in · Memory Explorer';
    signin(main, { params: new URLSearchParams(location.search), session });
    return;
  }
  if (!session.signedIn) {
    signInAgain();
    return;
  }
  signoutButton();
  markNav(path);
  const route = ROUTES.find(([re]) => re.test(path));
  if (!route) {
    document.title = 'Not found · Memory Explorer';
    replace(main, h('h1', {}, 'No such page'), h('p', {}, h('a', { href: '/ui/' }, 'Back to the overview')));
    return;
  }
  const [re, view, title] = route;
  const match = path.match(re);
  let id = null;
  try {
    id = match[1] === undefined ? null : decodeURIComponent(match[1]);
  } catch {
    id = match[1];
  }
  document.title = `${id ? `${title} ${id}` : title} · Memory Explorer`;
  replace(main, h('p', { class: 'muted loading' }, 'Loading…'));
  try {
    await view(main, { id, params: new URLSearchParams(location.search), session });
  } catch (e) {
    replace(main, h('h1', {}, title), errorBox(e));
  }
}

start();
