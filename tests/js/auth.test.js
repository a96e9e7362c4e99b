// JWT auth with the official client: a token signed by the `jsonwebtoken`
// package with the server's key (as a SocketCluster server would sign it)
// authenticates, and the client keeps it across a reconnect.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const jwt = require('jsonwebtoken');
const { startServer } = require('./server');

const KEY = 'shared-secret-key';

test('a token signed with the same key authenticates and survives a reconnect', async () => {
  const server = await startServer({ plugins: ['echo'], args: ['--auth-key', KEY] });
  try {
    const socket = await server.connect();
    const token = jwt.sign({ username: 'alice' }, KEY, { expiresIn: 60 });
    const status = await socket.authenticate(token);
    assert.equal(status.isAuthenticated, true);
    assert.equal(socket.authState, socket.AUTHENTICATED);
    assert.equal(socket.authToken.username, 'alice');

    // The client sends its token with the next handshake.
    socket.disconnect();
    socket.connect();
    await socket.listener('connect').once(5000);
    assert.equal(socket.authState, socket.AUTHENTICATED);
    assert.equal(await socket.invoke('echo', 'still me'), 'still me');
  } finally {
    await server.stop();
  }
});

test('expired and tampered tokens are refused and removed', async () => {
  const server = await startServer({ plugins: ['echo'], args: ['--auth-key', KEY] });
  try {
    const socket = await server.connect();
    const expired = jwt.sign({ username: 'bob', exp: Math.floor(Date.now() / 1000) - 10 }, KEY);
    await assert.rejects(socket.authenticate(expired), { name: 'AuthTokenExpiredError' });
    assert.equal(socket.authState, socket.UNAUTHENTICATED);

    const tampered = jwt.sign({ username: 'mallory' }, 'another key');
    await assert.rejects(socket.authenticate(tampered), { name: 'AuthTokenInvalidError' });
    assert.equal(socket.authToken, null);
  } finally {
    await server.stop();
  }
});

test('a plugin gives the socket a token with setAuthToken', async () => {
  const dir = require('node:path').join(__dirname, '..', 'fixtures', 'wasm');
  const server = await startServer({ plugins: ['echo'], args: ['--auth-key', KEY], extraPlugins: [require('node:path').join(dir, 'tokens.wasm')] });
  try {
    const socket = await server.connect();
    const authenticated = socket.listener('authenticate').once(5000);
    await socket.invoke('issue', { username: 'carol' });
    await authenticated;
    assert.equal(socket.authState, socket.AUTHENTICATED);
    assert.equal(socket.authToken.username, 'carol');
    assert.equal(jwt.verify(socket.signedAuthToken, KEY).username, 'carol');
    assert.equal((await socket.invoke('whoami')).username, 'carol');
  } finally {
    await server.stop();
  }
});
