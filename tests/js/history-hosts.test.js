// Channel history across two hosts sharing a real redis-server, with the
// official client and client/recovery.js: subscribers behind a TCP
// balancer (each connection to a random host) are cut 1,000 times at
// random while a publisher sends a numbered stream on several channels,
// and one host is killed and started again in the middle; every
// subscriber ends with every number of every channel once, in order.
// Flushing Redis changes the epoch, which a returning client is told.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { startServer, startRedis } = require('./server');
const { withRecovery } = require('../../client/recovery.js');

const CONFIG = `
[channels."room:*"]
history-size = 2000
history-ttl-secs = 120
`;

const CHANNELS = ['room:0', 'room:1', 'room:2', 'room:3'];
const SUBSCRIBERS = 20;
const CUTS = 1000;

/** Reconnect fast after a cut (the client's default waits 10-20 s). */
const RECONNECT = {
  autoReconnect: true,
  autoReconnectOptions: { initialDelay: 30, randomness: 40, multiplier: 1, maxDelay: 100 },
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, what, ms = 30000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * A TCP balancer on a free port: each connection goes to one of the
 * hosts' ports at random (the other if that one refuses), and any of them
 * can be cut: both sides reset, no close frame.
 */
async function balancer() {
  const targets = new Set();
  const open = new Set();
  const server = net.createServer((client) => {
    client.on('error', () => {});
    const pair = { client, upstream: null };
    open.add(pair);
    client.on('close', () => { open.delete(pair); pair.upstream?.destroy(); });
    const order = [...targets].sort(() => Math.random() - 0.5);
    const attempt = (i) => {
      if (i >= order.length || client.destroyed) { client.destroy(); return; }
      const upstream = net.connect(order[i], '127.0.0.1');
      upstream.once('connect', () => {
        pair.upstream = upstream;
        client.pipe(upstream);
        upstream.pipe(client);
        upstream.on('close', () => client.destroy());
      });
      upstream.once('error', () => {
        if (pair.upstream === upstream) client.destroy();
        else attempt(i + 1);
      });
    };
    attempt(0);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    targets,
    /** Cut one connection that reached a host, at random; false if none. */
    cutOne() {
      const live = [...open].filter((pair) => pair.upstream && !pair.client.destroyed);
      if (live.length === 0) return false;
      const pair = live[Math.floor(Math.random() * live.length)];
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
      return true;
    },
    close() {
      for (const pair of open) { pair.client.destroy(); pair.upstream?.destroy(); }
      server.close();
    },
  };
}

test('1,000 random cuts across two hosts, one restarted: every number once, in order', { timeout: 180000 }, async () => {
  const redis = await startRedis();
  const args = ['--broker', redis.url];
  let a = await startServer({ plugins: ['echo'], config: CONFIG, args });
  const b = await startServer({ plugins: ['echo'], config: CONFIG, args });
  const lb = await balancer();
  lb.targets.add(a.port);
  lb.targets.add(b.port);
  const subscribers = [];
  try {
    for (let i = 0; i < SUBSCRIBERS; i += 1) {
      const socket = await b.connect({ ...RECONNECT, port: lb.port });
      const failures = [];
      const recovery = withRecovery(socket, {
        onUnrecoverable: (channel, reason) => failures.push([channel, reason]),
      });
      const received = {};
      for (const name of CHANNELS) {
        const channel = recovery.subscribe(name);
        received[name] = [];
        (async () => {
          for await (const data of channel) received[name].push(data);
        })();
        await channel.listener('subscribe').once(5000);
      }
      subscribers.push({ socket, recovery, failures, received });
    }

    // The publisher talks to host B directly; B is never restarted.
    const publisher = await b.connect();
    const sent = Object.fromEntries(CHANNELS.map((name) => [name, 0]));
    let cuts = 0;
    let publishing = true;
    const publishingDone = (async () => {
      const deadline = Date.now() + 90000;
      for (let n = 0; publishing && Date.now() < deadline && n < 40000; n += 1) {
        const name = CHANNELS[n % CHANNELS.length];
        sent[name] += 1;
        await publisher.invokePublish(name, sent[name]);
        if (n % 4 === 3) await sleep(2);
      }
    })();

    let restarted = false;
    const deadline = Date.now() + 90000;
    while (cuts < CUTS && Date.now() < deadline) {
      if (lb.cutOne()) cuts += 1;
      if (cuts === CUTS / 2 && !restarted) {
        restarted = true;
        // Host A dies with its connections, and comes back on a new port.
        lb.targets.delete(a.port);
        await a.stop();
        a = await startServer({ plugins: ['echo'], config: CONFIG, args });
        lb.targets.add(a.port);
      }
      await sleep(8);
    }
    publishing = false;
    await publishingDone;
    assert.equal(cuts, CUTS, 'every cut made within the time bound');
    assert.ok(restarted);
    const total = Object.values(sent).reduce((x, y) => x + y, 0);
    assert.ok(total >= 1000, `only ${total} publications`);

    const complete = () => subscribers.every((s) => CHANNELS.every(
      (name) => s.received[name].length >= sent[name],
    ));
    await until(complete, 'every subscriber to catch up', 60000);
    await sleep(300);
    for (const [i, s] of subscribers.entries()) {
      assert.deepEqual(s.failures, [], `subscriber ${i} was told it cannot recover`);
      for (const name of CHANNELS) {
        const expected = Array.from({ length: sent[name] }, (_, k) => k + 1);
        assert.deepEqual(s.received[name], expected, `subscriber ${i}, ${name}`);
      }
    }
    const health = await (await fetch(`http://127.0.0.1:${b.port}/healthz`)).json();
    assert.equal(health.broker.history_lost, 0, JSON.stringify(health.broker));
    console.log(`# ${cuts} cuts, ${total} publications on ${CHANNELS.length} channels, `
      + `${SUBSCRIBERS} subscribers, host A restarted once`);
  } finally {
    for (const s of subscribers) s.socket.disconnect();
    lb.close();
    await a.stop();
    await b.stop();
    redis.stop();
  }
});

test('a client that comes back after Redis was flushed is told its history is gone', async () => {
  const redis = await startRedis();
  const args = ['--broker', redis.url];
  const a = await startServer({ plugins: ['echo'], config: CONFIG, args });
  const b = await startServer({ plugins: ['echo'], config: CONFIG, args });
  try {
    const publisher = await a.connect();
    // Publications are acknowledged before Redis numbers them: the
    // publisher's own subscription shows when one is in the history.
    const echoed = [];
    const own = publisher.subscribe('room:flush');
    (async () => {
      for await (const data of own) echoed.push(data);
    })();
    await own.listener('subscribe').once(5000);
    const subscriber = await b.connect({ ...RECONNECT, autoReconnect: false });
    const failures = [];
    const recovery = withRecovery(subscriber, {
      onUnrecoverable: (channel, reason, report) => failures.push({ channel, reason, report }),
    });
    const channel = recovery.subscribe('room:flush');
    await channel.listener('subscribe').once(5000);
    const received = [];
    (async () => {
      for await (const data of channel) received.push(data);
    })();
    await publisher.invokePublish('room:flush', 'before');
    await until(() => received.length === 1, 'the first publication');
    const before = recovery.position('room:flush');

    subscriber.disconnect();
    redis.cli('FLUSHALL');
    await publisher.invokePublish('room:flush', 'after');
    await until(() => echoed.includes('after'), 'the publication after the flush');
    subscriber.connect();
    await until(() => failures.length === 1, 'the unrecoverable report');
    assert.equal(failures[0].reason, 'epoch-changed');
    assert.notEqual(failures[0].report.epoch, before.epoch);
    assert.equal(failures[0].report.offset, 1);
    // Recovery goes on in the new epoch.
    await publisher.invokePublish('room:flush', 'next');
    await until(() => received.includes('next'), 'the next publication');
    assert.deepEqual(received, ['before', 'next']);
    assert.deepEqual(recovery.position('room:flush'), { epoch: failures[0].report.epoch, offset: 2 });
  } finally {
    await a.stop();
    await b.stop();
    redis.stop();
  }
});
