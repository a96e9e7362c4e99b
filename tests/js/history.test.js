// Channel history with the official client and client/recovery.js: a
// subscriber whose TCP connection is cut again and again, while a
// publisher sends a numbered stream, ends with every number once, in
// order; the "cannot recover" report; last-value channels; channels
// without history unchanged.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');
const { withRecovery } = require('../../client/recovery.js');

const CONFIG = `
[channels."room:*"]
history-size = 1000
history-ttl-secs = 60

[channels."short:*"]
history-size = 5
history-ttl-secs = 60

[channels."last:*"]
history-size = 1
history-ttl-secs = 60
last-value = true
`;

/** Reconnect fast after a cut (the client's default waits 10-20 s). */
const RECONNECT = {
  autoReconnect: true,
  autoReconnectOptions: { initialDelay: 50, randomness: 50, multiplier: 1, maxDelay: 200 },
};

/** Everything a channel delivers, kept. */
function collect(channel) {
  const items = [];
  (async () => {
    for await (const data of channel) items.push(data);
  })();
  return items;
}

async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Cut the client's TCP connection under its WebSocket: no close frame. */
function cut(socket) {
  const tcp = socket.transport && socket.transport.socket && socket.transport.socket._socket;
  if (tcp) tcp.destroy();
}

test('a subscriber cut off again and again gets every publication once, in order', async () => {
  const server = await startServer({ plugins: ['echo'], config: CONFIG });
  try {
    const publisher = await server.connect();
    const subscriber = await server.connect(RECONNECT);
    const failures = [];
    const recovery = withRecovery(subscriber, {
      onUnrecoverable: (channel, reason) => failures.push([channel, reason]),
    });
    const channel = recovery.subscribe('room:1');
    await channel.listener('subscribe').once(5000);
    const received = collect(channel);

    const total = 400;
    let cuts = 0;
    for (let n = 1; n <= total; n += 1) {
      await publisher.invokePublish('room:1', n);
      if (n % 40 === 20) {
        cut(subscriber);
        cuts += 1;
      }
    }
    await until(() => received.length >= total, `${total} publications (got ${received.length})`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(cuts >= 9);
    assert.deepEqual(failures, []);
    assert.deepEqual(received, Array.from({ length: total }, (_, i) => i + 1));
    assert.deepEqual(recovery.position('room:1').offset, total);
  } finally {
    await server.stop();
  }
});

test('a subscriber that missed more than the history keeps is told so', async () => {
  const server = await startServer({ plugins: ['echo'], config: CONFIG });
  try {
    const publisher = await server.connect();
    const subscriber = await server.connect({ ...RECONNECT, autoReconnect: false });
    const failures = [];
    const recovery = withRecovery(subscriber, {
      onUnrecoverable: (channel, reason, report) => failures.push({ channel, reason, report }),
    });
    const channel = recovery.subscribe('short:1');
    await channel.listener('subscribe').once(5000);
    const received = collect(channel);
    await publisher.invokePublish('short:1', 'seen');
    await until(() => received.length === 1, 'the first publication');

    subscriber.disconnect();
    for (let n = 1; n <= 20; n += 1) await publisher.invokePublish('short:1', n);
    subscriber.connect();
    await until(() => failures.length === 1, 'the unrecoverable report');
    assert.equal(failures[0].channel, 'short:1');
    assert.equal(failures[0].reason, 'too-old');
    assert.equal(failures[0].report.offset, 21);
    // Recovery goes on from where the channel is now.
    await publisher.invokePublish('short:1', 'after');
    await until(() => received.includes('after'), 'the next publication');
    assert.deepEqual(received, ['seen', 'after']);
    assert.deepEqual(recovery.position('short:1'), { epoch: failures[0].report.epoch, offset: 22 });
  } finally {
    await server.stop();
  }
});

test('a last-value channel gives a new subscriber its latest publication at once', async () => {
  const server = await startServer({ plugins: ['echo'], config: CONFIG });
  try {
    const publisher = await server.connect();
    for (const price of [10, 11, 12]) await publisher.invokePublish('last:price', price);
    const late = await server.connect();
    const channel = late.subscribe('last:price');
    const received = collect(channel);
    await until(() => received.length === 1, 'the latest publication');
    assert.deepEqual(received, [12]);
  } finally {
    await server.stop();
  }
});

test('channels without history are unchanged, and asking them to recover says so', async () => {
  const server = await startServer({ plugins: ['echo'], config: CONFIG });
  try {
    const publisher = await server.connect();
    const subscriber = await server.connect();
    const raw = [];
    (async () => {
      for await (const { message } of subscriber.listener('message')) raw.push(message);
    })();
    const plain = subscriber.subscribe('plain');
    await plain.listener('subscribe').once(5000);
    await publisher.invokePublish('plain', { a: 1 });
    await until(() => raw.some((m) => m.includes('"#publish"')), 'the publication');
    assert.equal(raw.find((m) => m.includes('"#publish"')),
      '{"event":"#publish","data":{"channel":"plain","data":{"a":1}}}');

    const failures = [];
    const recovery = withRecovery(subscriber, {
      onUnrecoverable: (channel, reason) => failures.push([channel, reason]),
    });
    // Asking with a position on a channel that keeps none.
    const channel = subscriber.subscribe('other', { data: { '#recover': { epoch: 'x', offset: 3 } } });
    await channel.listener('subscribe').once(5000);
    await until(() => raw.some((m) => m.includes('wasmcluster:history')), 'the report');
    const report = JSON.parse(raw.find((m) => m.includes('wasmcluster:history')));
    assert.deepEqual(report, {
      event: 'wasmcluster:history',
      data: { channel: 'other', recovered: false, missed: 0, reason: 'no-history' },
    });
    assert.equal(recovery.position('other'), null, 'not subscribed through the helper');
  } finally {
    await server.stop();
  }
});
