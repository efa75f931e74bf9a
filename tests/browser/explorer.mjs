// The Memory Explorer in a real browser: headless Debian chromium driven by playwright-core,
// against a running trace-proxy whose rows came from real proxied requests. Started by
// tests/it/ui.rs (`the_explorer_works_in_a_real_browser`), which sends that traffic and passes
// what it sent in the environment. Exits non-zero on the first failed check; writes a
// screenshot of every view to OUT_DIR.

import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through tests/it/ui.rs)`);
  return v;
};
const ADMIN = env('ADMIN_URL');
const DISABLED_ADMIN = env('DISABLED_ADMIN_URL');
const PROXY = env('PROXY_URL');
const TOKEN = env('TOKEN');
const FAILED_TRACE = env('FAILED_TRACE');
const CANARY_TRACE = env('CANARY_TRACE');
const CANARY_USER = env('CANARY_USER');
const CANARY_WORKFLOW = env('CANARY_WORKFLOW');
const EXECUTION_ID = env('EXECUTION_ID');
const OUT_DIR = env('OUT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const enc = encodeURIComponent;
const bearer = { authorization: `Bearer ${TOKEN}` };

async function api(path, headers = bearer) {
  const resp = await fetch(ADMIN + path, { headers });
  return { status: resp.status, body: resp.status === 200 ? await resp.json() : null };
}

rmSync(OUT_DIR, { recursive: true, force: true });
mkdirSync(OUT_DIR, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'trace-proxy-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: ADMIN });
const page = context.pages()[0] || await context.newPage();

const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('dialog', async (d) => {
  problems.push(`dialog opened: ${d.type()} ${d.message()}`);
  await d.dismiss();
});
page.on('console', (m) => {
  const text = m.text();
  // A blocked inline script or handler shows up as a CSP report in the console.
  if (m.type() === 'error' && !/401 \(Unauthorized\)|status of 401/.test(text)) problems.push(`console error: ${text}`);
});

async function shot(name) {
  await page.screenshot({ path: join(OUT_DIR, `${name}.png`), fullPage: true });
}

// Nothing the stored data carried ran: no canary global, no dialog, no page error.
async function noScriptRan(where) {
  const xss = await page.evaluate(() => window.__xss);
  assert.equal(xss, undefined, `${where}: a stored value ran as script (window.__xss = ${xss})`);
  assert.deepEqual(problems, [], `${where}: ${problems.join('; ')}`);
}

async function goto(path) {
  await page.goto(ADMIN + path);
  await page.waitForSelector('main .panel, main .error, main h1');
}

async function rowsTraceIds() {
  return page.$$eval('main tbody tr', (trs) => trs.map((tr) => tr.dataset.trace));
}

const steps = [];
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    steps.push(name);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.stack || e}`);
    await page.screenshot({ path: join(OUT_DIR, 'failure.png'), fullPage: true }).catch(() => {});
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    process.exit(1);
  }
}

let sessionCookie = null;

await step('without admin.token the page explains how to enable it', async () => {
  await page.goto(`${DISABLED_ADMIN}/`);
  await page.waitForSelector('main h1');
  const text = await page.textContent('main');
  assert.ok(text.includes('not enabled') && text.includes('TRACE_PROXY_ADMIN_TOKEN'), text);
  assert.equal(await page.$('#token'), null, 'no sign-in form without a token');
  await shot('disabled');
});

await step('an unsigned visitor is sent from / to the sign-in page', async () => {
  await page.goto(`${ADMIN}/`);
  await page.waitForURL(/\/ui\/signin\?next=/);
  await page.waitForSelector('#token');
  await shot('signin');
});

await step('a wrong token is refused with a message', async () => {
  await page.fill('#token', 'not-the-token-not-the-token');
  await page.click('form.signin button[type=submit]');
  await page.waitForFunction(() => document.querySelector('.form-message').textContent.includes('not the admin token'));
  problems.length = 0; // the refused POST logs a 401 in the console
});

await step('sign in with the keyboard; the session cookie is HttpOnly and SameSite=Strict', async () => {
  await page.focus('#token');
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${ADMIN}/ui/`);
  await page.waitForSelector('.charts svg');
  const cookies = await context.cookies(ADMIN);
  const c = cookies.find((x) => x.name === 'trace_proxy_session');
  assert.ok(c, `no session cookie in ${JSON.stringify(cookies.map((x) => x.name))}`);
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, 'Strict');
  assert.equal(c.path, '/');
  assert.equal(await page.evaluate(() => document.cookie.includes('trace_proxy_session')), false);
  sessionCookie = `${c.name}=${c.value}`;
});

await step('overview: charts, the failing workflow, copy as JSON is the API body', async () => {
  await page.waitForSelector('text=order-sync');
  const bars = await page.$$eval('.charts svg a rect.bar-failed', (r) => r.length);
  assert.ok(bars >= 1, 'no failure bar');
  const total = await page.textContent('.cards .card-value');
  assert.ok(Number(total.replace(/,/g, '')) >= 15, `requests card says ${total}`);
  await page.click('button.copy');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  const apiPath = await page.getAttribute('button.copy', 'data-api');
  assert.equal(apiPath, '/api/overview?window=day');
  const again = await api(apiPath);
  const parsed = JSON.parse(copied);
  assert.equal(parsed.totals.count, again.body.totals.count);
  assert.deepEqual(Object.keys(parsed).sort(), Object.keys(again.body).sort());
  await noScriptRan('overview');
  await shot('overview');
  await goto('/ui/?window=hour');
  await page.waitForSelector('.tabs a[aria-current=page]:has-text("Last hour")');
});

await step('traces: filter to the failed workflow with the form, find the failed trace', async () => {
  await goto('/ui/traces');
  await page.selectOption('select[name=status]', 'failed');
  await page.fill('input[name=workflowId]', 'order-sync');
  await page.click('form.filters button[type=submit]');
  await page.waitForURL(/status=failed/);
  const url = new URL(page.url());
  assert.equal(url.searchParams.get('workflowId'), 'order-sync');
  await page.waitForSelector('main tbody tr');
  const ids = await rowsTraceIds();
  assert.deepEqual(ids, [FAILED_TRACE, FAILED_TRACE, FAILED_TRACE], `rows: ${ids}`);
  await noScriptRan('traces');
  await shot('traces');
  // The shared URL reproduces the view.
  await goto(url.pathname + url.search);
  assert.equal((await rowsTraceIds()).length, 3);
  await page.click(`main tbody tr:first-child td.id a`);
  await page.waitForURL(new RegExp(`/ui/traces/${enc(FAILED_TRACE)}$`));
});

await step('trace: three attempts on the timeline, payloads, redaction, truncation, n8n link', async () => {
  await page.waitForSelector('.attempt');
  assert.equal(await page.$$eval('.attempt', (a) => a.length), 3);
  assert.equal(await page.$$eval('.timeline rect.tl-bar', (r) => r.length), 3);
  assert.equal(await page.$$eval('.attempt .badge.status-failed', (b) => b.length), 3);
  const codes = await page.$$eval('.attempt h3 .code', (c) => c.map((x) => x.textContent));
  assert.deepEqual(codes, ['HTTP_503', 'HTTP_500', 'HTTP_503']);
  const text = await page.textContent('main');
  assert.ok(text.includes('POST /webhook/order-sync'), 'method and target');
  assert.ok(text.includes('503') && text.includes('500'), 'HTTP statuses');
  assert.ok(await page.$('.attempt .j-str.redacted'), 'the redacted password is marked');
  assert.ok(!text.includes('hunter2'), 'a secret reached the page');
  assert.ok(await page.$('#attempt-3 .trunc-note'), 'attempt 3 carries the truncation indicator');
  // Collapsible with the keyboard.
  const summary = page.locator('#attempt-1 details.payload > summary').first();
  await summary.focus();
  const before = await summary.evaluate((s) => s.parentElement.open);
  await page.keyboard.press('Enter');
  assert.notEqual(await summary.evaluate((s) => s.parentElement.open), before);
  await page.keyboard.press('Enter');
  assert.equal(await summary.evaluate((s) => s.parentElement.open), before);
  await noScriptRan('trace');
});

await step('trace: the diff between consecutive attempts is highlighted', async () => {
  const diffs = page.locator('.diff');
  assert.equal(await diffs.count(), 2);
  const first = await diffs.nth(0).textContent();
  assert.ok(first.includes('Attempt 1 → 2'), first);
  assert.ok(first.includes('error code') && first.includes('HTTP_503') && first.includes('HTTP_500'), first);
  assert.ok(first.includes('/attempt'), first);
  assert.ok(await page.$('.diff ins') && await page.$('.diff del'), 'highlighted old and new values');
  const second = await diffs.nth(1).textContent();
  assert.ok(second.includes('/note'), `the added note: ${second}`);
  await shot('trace');
  // The README's picture: attempts, timeline and diff, payloads folded.
  await page.$$eval('details.payload', (ds) => ds.forEach((d) => { d.open = false; }));
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await shot('trace-summary');
  // Copy as JSON of the chain is the chain API's body.
  await page.locator('button.copy').first().click();
  const copied = JSON.parse(await page.evaluate(() => navigator.clipboard.readText()));
  const chain = await api(`/api/traces/${enc(FAILED_TRACE)}?fields=*&payloads=full`);
  assert.deepEqual(copied, chain.body);
});

await step('the XSS canaries in bodies, user, workflow and trace ids show as text and never run', async () => {
  await goto(`/ui/traces?userId=${enc(CANARY_USER)}`);
  await page.waitForSelector('main tbody tr');
  let text = await page.textContent('main');
  assert.ok(text.includes(CANARY_USER) && text.includes(CANARY_WORKFLOW), 'canaries shown as text');
  assert.equal((await page.inputValue('input[name=userId]')), CANARY_USER);
  await noScriptRan('traces with canaries');
  await page.click('main tbody tr:first-child td.id a');
  await page.waitForSelector('.attempt');
  text = await page.textContent('main');
  assert.ok(text.includes(CANARY_TRACE), 'trace id shown as text');
  assert.ok(text.includes(JSON.stringify(CANARY_USER)), 'payload value shown as text');
  assert.equal(await page.$$eval('main img, main script, main iframe', (n) => n.length), 0);
  // Its n8n execution is linked through admin.n8n_execution_url, every part URL-encoded.
  const n8n = await page.getAttribute('a.n8n-link', 'href');
  const id = (await page.textContent('a.n8n-link')).replace(/\s*↗$/, '');
  assert.equal(n8n, `https://n8n.example.com/workflow/${enc(CANARY_WORKFLOW)}/executions/${enc(id)}`);
  await noScriptRan('trace with canaries');
  await shot('canary');
  for (const path of [`/ui/users/${enc(CANARY_USER)}`, `/ui/workflows/${enc(CANARY_WORKFLOW)}`]) {
    await goto(path);
    await page.waitForSelector('main .panel');
    assert.ok((await page.textContent('main h1')).includes(path.includes('/users/') ? CANARY_USER : CANARY_WORKFLOW));
    assert.equal(await page.$$eval('main img, main script', (n) => n.length), 0);
    await noScriptRan(path);
  }
  assert.ok((await page.title()).includes(CANARY_WORKFLOW), 'the title holds the id as text');
});

await step('paging: older pages cover every attempt exactly once', async () => {
  const all = (await api('/api/traces?limit=500&payloads=none')).body.items.map((r) => r.id);
  await goto('/ui/traces?limit=4');
  const seen = [];
  for (let n = 0; n < 20; n += 1) {
    await page.waitForSelector('main tbody tr');
    seen.push(...await page.$$eval('main tbody tr', (trs) => trs.map((tr) => tr.dataset.id)));
    const older = await page.$('nav.pager a[rel=next]');
    if (!older) break;
    await older.click();
    await page.waitForURL(/cursor=/);
    await page.waitForSelector('nav.pager a:has-text("Newest")');
  }
  assert.deepEqual(seen, all, 'pages in order, no gap, no repeat');
  assert.ok(all.length > 8, `only ${all.length} rows`);
});

await step('live tail shows a request made after the page opened', async () => {
  await goto('/ui/traces?limit=4');
  await page.check('#live-tail');
  await page.waitForFunction(() => document.querySelector('.tail [role=status]').textContent.startsWith('Live'));
  assert.ok(page.url().includes('tail=1'));
  const live = `t-live-${Date.now()}`;
  const resp = await fetch(`${PROXY}/webhook/live-tail`, {
    method: 'POST',
    headers: { 'x-trace-id': live, 'x-workflow-id': 'live-tail', 'x-user-id': 'carol', 'content-type': 'application/json' },
    body: JSON.stringify({ hello: 'live' }),
  });
  assert.equal(resp.status, 200);
  const row = page.locator(`main tbody tr[data-trace="${live}"]`);
  await row.waitFor({ timeout: 15000 });
  assert.ok(await row.evaluate((tr) => tr.classList.contains('fresh')));
  assert.equal(await page.$eval('main tbody tr', (tr) => tr.dataset.trace), live, 'new rows go on top');
  await shot('live-tail');
  await page.uncheck('#live-tail');
});

await step('workflow, user and execution views', async () => {
  await goto('/ui/workflows/order-sync?window=hour');
  await page.waitForSelector('.charts svg');
  assert.ok((await page.textContent('main')).includes('HTTP_503'));
  assert.equal(await page.$$eval('main tbody tr', (t) => t.length) >= 3, true);
  await noScriptRan('workflow');
  await shot('workflow');
  await goto('/ui/users/alice');
  assert.deepEqual(await rowsTraceIds(), [FAILED_TRACE, FAILED_TRACE, FAILED_TRACE]);
  await shot('user');
  await goto(`/ui/executions/${EXECUTION_ID}`);
  const ids = await rowsTraceIds();
  assert.ok(ids.length >= 4 && ids.includes(FAILED_TRACE), `execution rows: ${ids}`);
  await shot('execution');
  await noScriptRan('user and execution');
});

await step('readable at phone width: nothing wider than the screen', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  for (const path of ['/ui/', `/ui/traces/${enc(FAILED_TRACE)}`, '/ui/traces']) {
    await goto(path);
    await page.waitForSelector('main .panel');
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 392, `${path} is ${wide} px wide at 390`);
  }
  await shot('traces-phone');
  await page.setViewportSize({ width: 1280, height: 900 });
});

await step('sign out: back to sign-in, and the old cookie no longer opens /api', async () => {
  await goto('/ui/');
  await page.click('#signout');
  await page.waitForURL(/\/ui\/signin/);
  const after = await api('/api/traces?limit=1', { cookie: sessionCookie });
  assert.equal(after.status, 401);
  await page.goto(`${ADMIN}/ui/traces`);
  await page.waitForURL(/\/ui\/signin\?next=%2Fui%2Ftraces/);
  await noScriptRan('after sign-out');
});

await context.close();
rmSync(profile, { recursive: true, force: true });
console.log(`${steps.length} steps passed`);
