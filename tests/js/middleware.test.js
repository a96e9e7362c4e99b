// Middleware hooks seen by the official client: the `guard` fixture
// (tests/fixtures/guard/src/lib.rs) denies or rewrites handshakes, tokens,
// subscriptions, publications and RPCs of every plugin, and the client gets
// the errors a SocketCluster server's middleware would give it.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const jwt = require('jsonwebtoken');
const socketClusterClient = require('socketcluster-client');
const { startServer, next, tokenEngine } = require('./server');

const KEY = 'middleware-js-key';
const guard = path.join(__dirname, '..', 'fixtures', 'wasm', 'guard.wasm');

function guarded() {
  return startServer({ plugins: ['echo'], extraPlugins: [guard], args: ['--auth-key', KEY] });
}


test('a publication is denied or rewritten', async () => {
  const server = await guarded();
  try {
    const socket = await server.connect();
    await assert.rejects(socket.invokePublish('readonly', 'hello'), {
      name: 'PublishForbidden',
      message: 'Not allowed to publish to readonly',
    });

    const subscriber = await server.connect();
    const wrapped = subscriber.subscribe('wrapped');
    await wrapped.listener('subscribe').once(5000);
    const received = next(wrapped);
    await socket.invokePublish('wrapped', { text: 'hi' });
    assert.deepEqual(await received, { wrapped: { text: 'hi' } });

    // Other channels pass as sent.
    const open = subscriber.subscribe('open');
    await open.listener('subscribe').once(5000);
    const plain = next(open);
    await socket.invokePublish('open', { text: 'as is' });
    assert.deepEqual(await plain, { text: 'as is' });
  } finally {
    await server.stop();
  }
});

test('a subscription is denied', async () => {
  const server = await guarded();
  try {
    const socket = await server.connect();
    const channel = socket.subscribe('forbidden');
    const { error } = await channel.listener('subscribeFail').once(5000);
    assert.equal(error.name, 'SubscribeForbidden');
    assert.equal(error.message, 'Not allowed to subscribe to forbidden');
    assert.equal(socket.isSubscribed('forbidden', true), false);

    const allowed = socket.subscribe('allowed');
    await allowed.listener('subscribe').once(5000);
    assert.equal(socket.isSubscribed('allowed'), true);
  } finally {
    await server.stop();
  }
});

test('an RPC is denied with custom error fields, or rewritten', async () => {
  const server = await guarded();
  try {
    const socket = await server.connect();
    const error = await socket.invoke('forbidden', { any: 'data' }).then(
      () => assert.fail('forbidden was answered'),
      (err) => err,
    );
    assert.equal(error.name, 'ForbiddenError');
    assert.equal(error.message, 'You cannot call forbidden');
    assert.deepEqual(error.extra, { why: 'test' });

    // The hook rewrites the data before echo sees it.
    assert.equal(await socket.invoke('echo', 'chain'), 'chain+guard');
    assert.equal(await socket.invoke('echo', 'untouched'), 'untouched');
  } finally {
    await server.stop();
  }
});

test('a handshake is denied with the status code of the error', async () => {
  const server = await guarded();
  try {
    for (const [reject, code] of [['4567', 4567], ['1', 4008]]) {
      const socket = socketClusterClient.create({
        hostname: '127.0.0.1', port: server.port, autoReconnect: false, query: { reject },
      });
      const failed = socket.listener('error').once(5000);
      const closed = socket.listener('close').once(5000);
      const { error } = await failed;
      assert.equal(error.name, 'HandshakeRejected');
      assert.equal(error.statusCode, code);
      assert.equal((await closed).code, code);
      assert.equal(socket.state, socket.CLOSED);
    }

    // A query without reject connects.
    const socket = await server.connect({ query: { reject: 'no' } });
    assert.equal(await socket.invoke('echo', 1), 1);
  } finally {
    await server.stop();
  }
});

test('a valid token is denied by the authenticate hook', async () => {
  const server = await guarded();
  try {
    const mallory = jwt.sign({ username: 'mallory' }, KEY, { expiresIn: 60 });
    const socket = await server.connect();
    const status = await socket.authenticate(mallory);
    assert.equal(status.isAuthenticated, false);
    assert.equal(status.authError.name, 'BannedUser');
    assert.equal(status.authError.message, 'mallory is banned');
    assert.equal(socket.authState, socket.UNAUTHENTICATED);
    assert.equal(socket.authToken, null);
    // The socket still works, and another user's token is accepted.
    assert.equal(await socket.invoke('echo', 'still here'), 'still here');
    const alice = await socket.authenticate(jwt.sign({ username: 'alice' }, KEY, { expiresIn: 60 }));
    assert.equal(alice.isAuthenticated, true);
    assert.equal(socket.authToken.username, 'alice');

    // The same token in the handshake: connected, not authenticated.
    const other = socketClusterClient.create({
      hostname: '127.0.0.1', port: server.port, autoReconnect: false, authEngine: tokenEngine(mallory),
    });
    try {
      const connected = await other.listener('connect').once(5000);
      assert.equal(connected.isAuthenticated, false);
      assert.equal(connected.authError.name, 'BannedUser');
      assert.equal(other.authState, other.UNAUTHENTICATED);
    } finally {
      other.disconnect();
    }
  } finally {
    await server.stop();
  }
});
