// Auth tokens work both ways between a real SocketCluster server
// (socketcluster-server 20, in this process) and wasmcluster sharing its
// auth key: a token one signs authenticates on the other, with the same
// claims, the same default `iat`/`exp`, and the same errors for bad tokens.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const jwt = require('jsonwebtoken');
const socketClusterServer = require('socketcluster-server');
const socketClusterClient = require('socketcluster-client');
const { startServer, tokenEngine } = require('./server');

const KEY = 'interop-shared-key';
const tokens = path.join(__dirname, '..', 'fixtures', 'wasm', 'tokens.wasm');
// The default lifetime of a token whose claims set no `exp`: SocketCluster's
// authDefaultExpiry and wasmcluster's --auth-default-expiry-secs.
const DEFAULT_EXPIRY = 86400;

/** A SocketCluster server on a free port, with two procedures: `login`
 * (`socket.setAuthToken(data)`) and `whoami` (the socket's `authToken`). */
async function startSocketCluster(authKey) {
  const httpServer = http.createServer();
  const agServer = socketClusterServer.attach(httpServer, { authKey });
  (async () => {
    for await (const { socket } of agServer.listener('connection')) {
      (async () => {
        for await (const request of socket.procedure('login')) {
          await socket.setAuthToken(request.data);
          request.end();
        }
      })();
      (async () => {
        for await (const request of socket.procedure('whoami')) {
          request.end(socket.authToken);
        }
      })();
    }
  })();
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const { port } = httpServer.address();
  const sockets = [];
  return {
    port,
    /** A connected official client socket; `options` as for create(). */
    async connect(options = {}) {
      const socket = socketClusterClient.create({
        hostname: '127.0.0.1', port, autoReconnect: false, ackTimeout: 5000, ...options,
      });
      sockets.push(socket);
      const status = await socket.listener('connect').once(5000);
      return { socket, status };
    },
    async stop() {
      for (const socket of sockets) socket.disconnect();
      await agServer.close();
      httpServer.closeAllConnections();
      await new Promise((resolve) => httpServer.close(resolve));
    },
  };
}


/** `iat` is now and `exp` the default lifetime after it. */
function assertDefaultTimes(claims) {
  const now = Math.floor(Date.now() / 1000);
  assert.equal(typeof claims.iat, 'number', JSON.stringify(claims));
  assert.ok(Math.abs(claims.iat - now) <= 5, `iat ${claims.iat} is not now (${now})`);
  assert.equal(claims.exp - claims.iat, DEFAULT_EXPIRY, JSON.stringify(claims));
}

/** What authenticate(token) gives: the status, or the error's fields. */
async function authOutcome(socket, token) {
  try {
    const { isAuthenticated, authError } = await socket.authenticate(token);
    return { isAuthenticated, authError: authError && { ...authError, name: authError.name, message: authError.message } };
  } catch (error) {
    return { error: { ...error, name: error.name, message: error.message } };
  }
}

let wasmcluster;
let socketCluster;

test.before(async () => {
  wasmcluster = await startServer({ plugins: ['echo'], extraPlugins: [tokens], args: ['--auth-key', KEY] });
  socketCluster = await startSocketCluster(KEY);
});

test.after(async () => {
  await wasmcluster?.stop();
  await socketCluster?.stop();
});

test('a token signed by wasmcluster authenticates on SocketCluster', async () => {
  const claims = { username: 'carol', roles: ['admin'], nested: { n: 1.5 } };
  const socket = await wasmcluster.connect();
  const authenticated = socket.listener('authenticate').once(5000);
  await socket.invoke('issue', claims);
  const { signedAuthToken } = await authenticated;
  assert.equal(signedAuthToken, socket.signedAuthToken);
  const signed = jwt.decode(signedAuthToken);
  assert.deepEqual(jwt.decode(signedAuthToken, { complete: true }).header, { alg: 'HS256', typ: 'JWT' });
  assertDefaultTimes(signed);
  assert.deepEqual(signed, { ...claims, iat: signed.iat, exp: signed.exp });
  assert.deepEqual(await socket.invoke('whoami'), signed);

  // In the handshake, from the client's token store.
  const { socket: inHandshake, status } = await socketCluster.connect({ authEngine: tokenEngine(signedAuthToken) });
  assert.equal(status.isAuthenticated, true);
  assert.equal(status.authError, undefined);
  assert.equal(inHandshake.authState, inHandshake.AUTHENTICATED);
  assert.deepEqual(await inHandshake.invoke('whoami'), signed);

  // With #authenticate on an open socket.
  const { socket: later } = await socketCluster.connect();
  assert.equal(await later.invoke('whoami'), null);
  const result = await later.authenticate(signedAuthToken);
  assert.equal(result.isAuthenticated, true);
  assert.equal(later.authState, later.AUTHENTICATED);
  assert.deepEqual(later.authToken, signed);
  assert.deepEqual(await later.invoke('whoami'), signed);
});

test('a token signed by SocketCluster authenticates on wasmcluster', async () => {
  const claims = { username: 'dave', roles: ['reader'], nested: { n: 1.5 } };
  const { socket: scSocket } = await socketCluster.connect();
  const authenticated = scSocket.listener('authenticate').once(5000);
  await scSocket.invoke('login', claims);
  const { signedAuthToken } = await authenticated;
  const signed = jwt.decode(signedAuthToken);
  assert.deepEqual(jwt.decode(signedAuthToken, { complete: true }).header, { alg: 'HS256', typ: 'JWT' });
  assertDefaultTimes(signed);
  assert.deepEqual(signed, { ...claims, iat: signed.iat, exp: signed.exp });
  assert.deepEqual(await scSocket.invoke('whoami'), signed);

  // With #authenticate on an open socket.
  const socket = await wasmcluster.connect();
  assert.equal(await socket.invoke('whoami'), null);
  const status = await socket.authenticate(signedAuthToken);
  assert.equal(status.isAuthenticated, true);
  assert.equal(socket.authState, socket.AUTHENTICATED);
  assert.deepEqual(socket.authToken, signed);
  assert.deepEqual(await socket.invoke('whoami'), signed);

  // In the handshake, from the client's token store.
  const inHandshake = await wasmcluster.connect({ authEngine: tokenEngine(signedAuthToken) });
  assert.equal(inHandshake.authState, inHandshake.AUTHENTICATED);
  assert.deepEqual(await inHandshake.invoke('whoami'), signed);
});

test('an explicit exp is kept by both servers', async () => {
  const exp = Math.floor(Date.now() / 1000) + 120;
  const socket = await wasmcluster.connect();
  await socket.invoke('issue', { username: 'erin', exp });
  const { socket: scSocket } = await socketCluster.connect();
  const authenticated = scSocket.listener('authenticate').once(5000);
  await scSocket.invoke('login', { username: 'erin', exp });
  await authenticated;
  const ours = jwt.decode(socket.signedAuthToken);
  const theirs = jwt.decode(scSocket.signedAuthToken);
  assert.equal(ours.exp, exp);
  assert.equal(theirs.exp, exp);
  assert.deepEqual(Object.keys(ours).sort(), Object.keys(theirs).sort());
});

// Given an `iat` and no `exp`, both count the default expiry from `iat`
// (as node's jsonwebtoken does), not from now.
test('an explicit iat without exp gives the same exp on both servers', async () => {
  const iat = Math.floor(Date.now() / 1000) - 1000;
  const socket = await wasmcluster.connect();
  await socket.invoke('issue', { username: 'frank', iat });
  const { socket: scSocket } = await socketCluster.connect();
  const authenticated = scSocket.listener('authenticate').once(5000);
  await scSocket.invoke('login', { username: 'frank', iat });
  await authenticated;
  const theirs = jwt.decode(scSocket.signedAuthToken);
  assert.equal(theirs.iat, iat);
  assert.equal(theirs.exp, iat + DEFAULT_EXPIRY);
  assert.deepEqual(jwt.decode(socket.signedAuthToken), theirs);
});

test('both servers refuse the same bad tokens with the same errors', async () => {
  const socket = await wasmcluster.connect();
  const { socket: scSocket } = await socketCluster.connect();
  const bad = {
    'another key': jwt.sign({ username: 'mallory' }, 'another key', { expiresIn: 60 }),
    expired: jwt.sign({ username: 'bob', exp: Math.floor(Date.now() / 1000) - 10 }, KEY),
    'not yet valid': jwt.sign({ username: 'bob' }, KEY, { notBefore: 60 }),
    malformed: 'not.a.token',
  };
  for (const [what, token] of Object.entries(bad)) {
    const ours = await authOutcome(socket, token);
    const theirs = await authOutcome(scSocket, token);
    assert.deepEqual(ours, theirs, `${what}: wasmcluster ${JSON.stringify(ours)}, SocketCluster ${JSON.stringify(theirs)}`);
    assert.equal(socket.authState, socket.UNAUTHENTICATED, what);
  }
});
