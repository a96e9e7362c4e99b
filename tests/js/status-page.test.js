// The status page at `/`, in headless Chromium, against the real server: it
// must show what the server does, live, as clients connect, call and crash
// the plugin, and say so when the server is gone.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer } = require('./server');

// A fixture whose rebuilds fail for a while after `flaky-break`: it backs off
// until they succeed again.
const flaky = path.join(__dirname, '..', 'fixtures', 'wasm', 'flaky.wasm');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const screenshots = fs.mkdtempSync(path.join(os.tmpdir(), 'wasmcluster-status-page-'));

let server;
let browser;
let page;
const pageErrors = [];
const sockets = [];

/** Client `i` of those the tests share (connected now if an earlier test
 * failed before connecting it). */
async function client(i) {
  while (sockets.length <= i) sockets.push(await server.connect());
  return sockets[i];
}

test.before(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the status page test needs Chromium `
      + '(`apt-get install -y chromium`, which .ci/run does; or set CHROMIUM_BIN)');
  }
  const { chromium } = require('playwright-core');
  server = await startServer({ plugins: ['echo'], extraPlugins: [flaky] });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1200, height: 560 } });
  page.on('pageerror', (error) => pageErrors.push(error));
  await page.goto(`http://127.0.0.1:${server.port}/`);
});

test.after(async () => {
  await browser?.close();
  await server?.stop();
});

/** What the page shows: the cards by id, and the plugin rows keyed by their
 * column headers (so that a value under the wrong header is caught too). */
function shown() {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    const headers = [...document.querySelectorAll('thead th')].map((th) => th.textContent.trim());
    const plugins = {};
    for (const tr of document.querySelectorAll('#plugins tr')) {
      const row = { highlighted: getComputedStyle(tr.cells[0]).backgroundColor !== 'rgba(0, 0, 0, 0)' };
      [...tr.cells].forEach((td, i) => { row[headers[i]] = td.textContent.trim(); });
      plugins[row.plugin] = row;
    }
    const ids = ['status', 'workers', 'connections', 'channels', 'rate-in', 'rate-out', 'total-in', 'uptime', 'error'];
    return { ...Object.fromEntries(ids.map((id) => [id, text(id)])), plugins };
  });
}

/** A number as the page prints it ("1,234", "0.5"); NaN for "–". */
const number = (text) => Number(String(text).replace(/,/g, '').replace(/ total$/, ''));

/** Wait until `check(state)` holds for what the page shows; fail with the
 * last state seen after `ms`. */
async function waitForPage(what, check, ms = 10000) {
  const deadline = Date.now() + ms;
  let state;
  for (;;) {
    state = await shown();
    if (check(state)) return state;
    if (Date.now() > deadline) {
      assert.fail(`the status page did not show ${what} within ${ms} ms; it shows ${JSON.stringify(state, null, 1)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function screenshot(name) {
  const file = path.join(screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`status page screenshot: ${file}`);
}

test('shows the workers and the echo plugin with its version', async () => {
  const socket = await server.connect();
  const { version } = await socket.invoke('version');
  socket.disconnect();
  assert.match(version, /^\d+\.\d+\.\d+/);

  const state = await waitForPage('2 workers and the echo plugin', (s) => s.workers === '2' && s.plugins.echo);
  const echo = state.plugins.echo;
  assert.equal(echo.version, version);
  assert.equal(echo.file, 'echo.wasm');
  assert.equal(echo.status, 'ok');
  assert.equal(echo.traps, '0');
  assert.equal(echo.highlighted, false);
  assert.equal(state.status, 'ok');
  assert.equal(state.channels, '0');
  assert.match(state.uptime, /^\d+s$/);
  assert.equal(await page.locator('#error').isVisible(), false);
  assert.match(await page.title(), /ok/);
});

test('counts connections as clients come and go', async () => {
  await waitForPage('0 connections', (s) => s.connections === '0');
  for (let i = 0; i < 3; i++) sockets.push(await server.connect());
  await waitForPage('3 connections', (s) => s.connections === '3');
  sockets.pop().disconnect();
  await waitForPage('2 connections', (s) => s.connections === '2');
});

test('shows message rates that follow the RPC traffic', async () => {
  await waitForPage('idle rates', (s) => s['rate-in'] === '0' && s['rate-out'] === '0');
  const before = number((await shown())['total-in']);

  // About 100 RPCs a second (one message in and one out each) until the
  // page shows a rate in that range, for 10 s at most.
  const clients = [await client(0), await client(1)];
  const calls = [];
  const timer = setInterval(() => {
    for (let i = 0; i < 5; i++) calls.push(clients[i % 2].invoke('echo', calls.length));
  }, 50);
  let state;
  try {
    const near100 = (text) => number(text) >= 50 && number(text) <= 200;
    state = await waitForPage('rates near 100 messages/s', (s) => near100(s['rate-in']) && near100(s['rate-out']));
  } finally {
    clearInterval(timer);
  }
  const answers = await Promise.all(calls);
  assert.deepEqual(answers, answers.map((_, i) => i));
  assert.ok(number(state['total-in']) > before, `total in went from ${before} to ${state['total-in']}`);

  await waitForPage(`at least ${before + calls.length} messages in`, (s) => number(s['total-in']) >= before + calls.length);
  await waitForPage('idle rates again', (s) => s['rate-in'] === '0' && s['rate-out'] === '0');
});

test('counts traps when a plugin crashes, and highlights one that backs off', async () => {
  const socket = await client(0);
  const traps = number((await shown()).plugins.echo.traps);

  await assert.rejects(socket.invoke('crash'), { name: 'PluginError' });
  let state = await waitForPage(`${traps + 1} traps`, (s) => number(s.plugins.echo.traps) === traps + 1);
  assert.match(state.plugins.echo['last error'], /crash/);
  assert.equal(state.plugins.echo.status, 'ok');

  // A plugin that cannot be rebuilt for 3 s backs off on this worker: the
  // server and its row turn degraded, while echo stays ok, and both recover
  // by themselves when a rebuild succeeds.
  await assert.rejects(socket.invoke('flaky-break', { for_ms: 3000 }), { name: 'PluginError' });
  // The next call rebuilds the instance, which fails: the back-off starts.
  await assert.rejects(socket.invoke('flaky-ok'), { name: 'PluginUnavailable' });
  state = await waitForPage('a degraded flaky plugin', (s) => s.status === 'degraded' && s.plugins.flaky.status === 'degraded');
  assert.ok(number(state.plugins.flaky['back-offs']) >= 1);
  assert.match(state.plugins.flaky['last error'], /init/);
  assert.equal(state.plugins.flaky.highlighted, true, 'the degraded row is highlighted');
  assert.equal(state.plugins.echo.status, 'ok');
  assert.equal(state.plugins.echo.highlighted, false);
  assert.match(await page.title(), /degraded/);
  await screenshot('degraded');

  state = await waitForPage('the flaky plugin ok again', (s) => s.status === 'ok' && s.plugins.flaky.status === 'ok');
  assert.equal(state.plugins.flaky.highlighted, false);
  assert.equal(await socket.invoke('flaky-ok'), 'ok');
});

test('says when the server cannot be reached', async () => {
  assert.equal(await page.locator('#error').isVisible(), false);
  await server.stop();
  const state = await waitForPage('that the server is unreachable', (s) => s.status === 'unreachable');
  assert.match(state.error, /Cannot reach the server/);
  assert.equal(state['rate-in'], '–');
  assert.equal(await page.locator('#error').isVisible(), true);
  await screenshot('unreachable');
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
});
