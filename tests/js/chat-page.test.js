// The chat page of examples/web (what `make run` serves at /chat/), in
// headless Chromium against the real server with the `chat` plugin and
// history for `room:*`: a newcomer sees the rooms, the messages sent before
// it came, live messages, and after its connection is cut (a TCP cut, no
// close frame) while others talk, the messages it missed, once and in
// order. Also the static file rules over raw HTTP.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { startServer } = require('./server');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const repoRoot = path.resolve(__dirname, '..', '..');
const web = path.join(repoRoot, 'examples', 'web');
const screenshots = fs.mkdtempSync(path.join(os.tmpdir(), 'wasmcluster-chat-page-'));

// As examples/wasmcluster.toml, which `make run` uses; and rooms named
// `tiny-*` that keep 2 messages, to miss more than they keep.
const CONFIG = `
[plugin.chat]
max-instances = 1

[channels."room:*"]
history-size = 100
history-ttl-secs = 3600

[channels."room:tiny-*"]
history-size = 2
history-ttl-secs = 3600
`;

/**
 * A TCP proxy to the server. Page A is loaded through it, so that its
 * WebSocket goes through it too: `down()` resets every connection (both
 * sides, as a network that drops would) and refuses new ones until `up()`.
 */
async function proxy(port) {
  const open = new Set();
  let refusing = false;
  const reset = (socket) => {
    if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
    else socket.destroy();
  };
  const server = net.createServer((client) => {
    if (refusing) {
      reset(client);
      return;
    }
    const upstream = net.connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        open.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    /** Cut every connection and refuse new ones; how many were cut. */
    down() {
      refusing = true;
      const cut = open.size;
      for (const socket of [...open]) reset(socket);
      return cut;
    },
    up() {
      refusing = false;
    },
    close() {
      this.down();
      server.close();
    },
  };
}

/** One raw HTTP/1.1 request, the path sent exactly as given (no client
 * normalises `..` away): `{status, headers, body}`. */
function rawRequest(port, method, target) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks = [];
    socket.setTimeout(5000, () => socket.destroy(new Error(`no answer to ${method} ${target}`)));
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const [head, ...rest] = text.split('\r\n\r\n');
      const [statusLine, ...lines] = head.split('\r\n');
      const headers = Object.fromEntries(lines.map((line) => {
        const at = line.indexOf(':');
        return [line.slice(0, at).toLowerCase(), line.slice(at + 1).trim()];
      }));
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: rest.join('\r\n\r\n') });
    });
    socket.write(`${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  });
}

let server;
let through;
let browser;
const pages = {};
const pageErrors = [];

test.before(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the chat page test needs Chromium `
      + '(`apt-get install -y chromium`, which scripts/install-test-deps does; or set CHROMIUM_BIN)');
  }
  const { chromium } = require('playwright-core');
  server = await startServer({ plugins: ['chat'], config: CONFIG, args: ['--static-dir', web] });
  through = await proxy(server.port);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});

test.after(async () => {
  await browser?.close();
  through?.close();
  await server?.stop();
});

/** A page in a browser context of its own, at `port` (the proxy's or the
 * server's). */
async function openPage(name, port) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(`${name}: ${error.stack || error}`));
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(`${name} console: ${message.text()}`);
  });
  await page.goto(`http://127.0.0.1:${port}/chat/`);
  pages[name] = { page, context };
  return page;
}

/** What a page shows. */
function shown(page) {
  return page.evaluate(() => ({
    state: document.getElementById('state').dataset.state,
    title: document.getElementById('title').textContent,
    notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent,
    rooms: [...document.querySelectorAll('#rooms button')].map((button) => button.dataset.room),
    messages: [...document.querySelectorAll('#messages li')].map((li) => li.textContent),
  }));
}

/** Wait until `check(state)` holds for what `page` shows; fail with the
 * last state seen after `ms`. */
async function waitFor(page, what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const state = await shown(page);
    if (check(state)) return state;
    if (Date.now() > deadline) {
      assert.fail(`the page did not show ${what} within ${ms} ms; it shows ${JSON.stringify(state, null, 1)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function screenshot(page, name) {
  const file = path.join(screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`chat page screenshot: ${file}`);
}

/** Hide the notice line, so that the next notice is a new one. */
async function clearNotice(page) {
  await page.evaluate(() => { document.getElementById('notice').hidden = true; });
}

async function enter(page, nick, room) {
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join button');
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The `say` lines of a page's messages, as the page writes them. */
const says = (messages) => messages.filter((line) => /^[^ ]+: /.test(line));

/** Messages shown more than once (every line of these tests is unique,
 * but for joins after a reconnect). */
function repeated(messages) {
  const seen = new Set();
  return messages.filter((line) => !/ joined$| left$/.test(line) && (seen.has(line) || !seen.add(line)));
}

test('serves the page, its vendored client and the recovery helper, with their types', async () => {
  const page = await rawRequest(server.port, 'GET', '/chat/');
  assert.equal(page.status, 200);
  assert.equal(page.headers['content-type'], 'text/html; charset=utf-8');
  assert.equal(page.headers['x-content-type-options'], 'nosniff');
  assert.match(page.body, /<title>wasmcluster chat<\/title>/);

  const helper = await rawRequest(server.port, 'GET', '/wasmcluster/recovery.js');
  assert.equal(helper.status, 200);
  assert.equal(helper.headers['content-type'], 'text/javascript; charset=utf-8');
  assert.equal(helper.body, fs.readFileSync(path.join(repoRoot, 'client', 'recovery.js'), 'latin1'));

  // The vendored client is the npm package's file of the tests' version,
  // under a one-line header.
  const client = await rawRequest(server.port, 'GET', '/vendor/socketcluster-client.min.js');
  assert.equal(client.status, 200);
  assert.equal(client.headers['content-type'], 'text/javascript; charset=utf-8');
  const npmDir = path.dirname(require.resolve('socketcluster-client/package.json'));
  const { version } = require('socketcluster-client/package.json');
  const [header, ...body] = client.body.split('\n');
  assert.match(header, new RegExp(`^/\\*! socketcluster-client ${version.replace(/\./g, '\\.')} .*MIT`));
  assert.equal(body.join('\n'), fs.readFileSync(path.join(npmDir, 'socketcluster-client.min.js'), 'latin1'));

  const redirect = await rawRequest(server.port, 'GET', '/chat?room=lobby');
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.location, '/chat/?room=lobby');

  const head = await rawRequest(server.port, 'HEAD', '/chat/');
  assert.equal(head.status, 200);
  assert.equal(Number(head.headers['content-length']), Buffer.byteLength(page.body, 'latin1'));
  assert.equal(head.body, '');

  assert.equal((await rawRequest(server.port, 'POST', '/chat/')).status, 405);
  // The status page and the probes are routed before the files.
  assert.match((await rawRequest(server.port, 'GET', '/')).body, /<title>wasmcluster status<\/title>/);
  assert.equal((await rawRequest(server.port, 'GET', '/healthz')).status, 200);
});

test('serves nothing outside the directory, nor hidden files', async () => {
  for (const target of [
    '/../Cargo.toml',
    '/%2e%2e/Cargo.toml',
    '/%2E%2E/%2e%2e/Cargo.toml',
    '/chat/../../../Cargo.toml',
    '/chat/%2e%2e%2f%2e%2e%2fCargo.toml',
    '/..%2f..%2fCargo.toml',
    '//etc/passwd',
    '/.git/config',
    '/chat/missing.html',
  ]) {
    const answer = await rawRequest(server.port, 'GET', target);
    assert.equal(answer.status, 404, `${target}: ${answer.status} ${answer.body}`);
    assert.equal(answer.headers['x-content-type-options'], 'nosniff', target);
    assert.doesNotMatch(answer.body, /\[package\]|root:/, target);
  }
  assert.equal((await rawRequest(server.port, 'GET', '/%ff%fe')).status, 400);
});

test('a newcomer sees the rooms, the history and live messages, each once', async () => {
  // Before anyone opens the page: two rooms, and messages in one.
  const early = await server.connect();
  await early.invoke('join', { room: 'games', nick: 'eve' });
  await early.invoke('join', { room: 'lobby', nick: 'eve' });
  await early.invoke('say', { room: 'lobby', text: 'first' });
  await early.invoke('say', { room: 'lobby', text: 'second' });

  const a = await openPage('a', through.port);
  let state = await waitFor(a, 'connected, with both rooms', (s) => s.state === 'connected'
    && s.rooms.includes('lobby') && s.rooms.includes('games'));
  assert.deepEqual(state.rooms, ['games', 'lobby']);

  await enter(a, 'ada', 'lobby');
  state = await waitFor(a, 'the history and its own join', (s) => s.messages.includes('ada joined'));
  // Its own join was both live and in the history answer: shown once.
  assert.deepEqual(state.messages, ['eve joined', 'eve: first', 'eve: second', 'ada joined']);
  assert.equal(state.title, '#lobby as ada');

  const b = await openPage('b', server.port);
  await waitFor(b, 'connected', (s) => s.state === 'connected');
  await enter(b, 'bob', 'lobby');
  await waitFor(b, 'its join', (s) => s.messages.includes('bob joined'));
  await waitFor(a, "bob's join, live", (s) => s.messages.at(-1) === 'bob joined');

  await say(b, 'hello from bob');
  await say(a, 'hi bob');
  const everyone = ['eve: first', 'eve: second', 'bob: hello from bob', 'ada: hi bob'];
  state = await waitFor(a, 'both live messages', (s) => s.messages.includes('ada: hi bob'));
  assert.deepEqual(says(state.messages), everyone);
  const seenByB = await waitFor(b, 'both live messages', (s) => s.messages.includes('ada: hi bob'));
  assert.deepEqual(says(seenByB.messages), everyone);
  assert.deepEqual(repeated(seenByB.messages), []);
  await screenshot(a, '1-live');
});

test('after its connection is cut, the page recovers what it missed, in order and once', async () => {
  const a = pages.a.page;
  const b = pages.b.page;
  await clearNotice(a);
  const before = (await shown(a)).messages;

  assert.ok(through.down() >= 1, "page A's WebSocket went through the proxy");
  await waitFor(a, 'that it lost the connection', (s) => s.state !== 'connected');
  const missed = ['bob: missed 1', 'bob: missed 2', 'bob: missed 3'];
  for (const line of missed) await say(b, line.slice('bob: '.length));
  await waitFor(b, 'its three messages', (s) => s.messages.includes('bob: missed 3'));
  await screenshot(a, '2-cut');
  assert.deepEqual((await shown(a)).messages, before, 'nothing reached page A while it was cut off');

  through.up();
  const state = await waitFor(a, 'the recovered messages and the notice', (s) => s.state === 'connected'
    && s.messages.includes('ada joined', before.length) && /^Recovered \d+ missed messages/.test(s.notice || ''));
  await screenshot(a, '3-recovered');

  // What it missed (its own `leave`, published when the server saw the cut,
  // and bob's messages), then its join again, after the reconnect.
  const recovered = Number(/^Recovered (\d+)/.exec(state.notice)[1]);
  const after = state.messages.slice(before.length);
  assert.equal(after.length, recovered + 1, JSON.stringify(after));
  assert.equal(after.at(-1), 'ada joined');
  assert.deepEqual(says(after), missed);
  assert.deepEqual(after.filter((line) => !missed.includes(line)), ['ada left', 'ada joined']);
  assert.deepEqual(repeated(state.messages), []);

  // And it works as before: both ways.
  await say(a, 'back again');
  await say(b, 'welcome back');
  await waitFor(a, 'live messages again', (s) => s.messages.includes('bob: welcome back'));
  await waitFor(b, "page A's message", (s) => s.messages.includes('ada: back again'));
});

test('going offline and online again in the browser recovers too', async () => {
  const { page: a, context } = pages.a;
  const b = pages.b.page;
  await clearNotice(a);
  const before = (await shown(a)).messages;

  await context.setOffline(true);
  await waitFor(a, 'that it is offline', (s) => s.state === 'offline');
  // Chromium's offline mode (148 here) cuts no open WebSocket: it holds its
  // frames both ways and delivers them once back online, so nothing would
  // be missed. The proxy drops the connection meanwhile, as a network that
  // goes away does; back online, the page connects at once.
  assert.ok(through.down() >= 1, "page A's WebSocket went through the proxy");
  await say(b, 'while you were offline');
  await waitFor(b, 'its message', (s) => s.messages.includes('bob: while you were offline'));
  through.up();
  await context.setOffline(false);

  const state = await waitFor(a, 'the message it missed offline', (s) => s.state === 'connected'
    && s.messages.includes('bob: while you were offline') && /^Recovered \d+ missed messages/.test(s.notice || ''));
  const recovered = Number(/^Recovered (\d+)/.exec(state.notice)[1]);
  const after = state.messages.slice(before.length);
  assert.deepEqual(says(after), ['bob: while you were offline']);
  assert.ok(after.indexOf('bob: while you were offline') < recovered, JSON.stringify(after));
  assert.deepEqual(repeated(state.messages), []);
  await screenshot(a, '4-back-online');
});

test('when the room no longer keeps what it missed, the page says so and reloads the room', async () => {
  const a = pages.a.page;
  const b = pages.b.page;
  await enter(a, 'ada', 'tiny-room');
  await waitFor(a, 'the new room', (s) => s.title === '#tiny-room as ada' && s.messages.includes('ada joined'));
  await enter(b, 'bob', 'tiny-room');
  await waitFor(a, "bob's join", (s) => s.messages.includes('bob joined'));

  assert.ok(through.down() >= 1, "page A's WebSocket went through the proxy");
  await waitFor(a, 'that it lost the connection', (s) => s.state !== 'connected');
  for (let n = 1; n <= 5; n += 1) await say(b, `lost ${n}`);
  await waitFor(b, 'its five messages', (s) => s.messages.includes('bob: lost 5'));
  through.up();

  // Two kept: bob's last message and the page's join again.
  const state = await waitFor(a, 'the reloaded room', (s) => s.state === 'connected'
    && /^Could not recover what you missed \(too-old\): reloaded/.test(s.notice || '')
    && s.messages.at(-1) === 'ada joined');
  assert.deepEqual(state.messages, ['bob: lost 5', 'ada joined']);
  await screenshot(a, '5-unrecoverable');

  await say(b, 'still here');
  await waitFor(a, 'live messages again', (s) => s.messages.at(-1) === 'bob: still here');
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
});
