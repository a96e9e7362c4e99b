// A plugin acts on the socket through the host: kickOut and a server-side
// close reach the official client as SocketCluster's would.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer } = require('./server');

const control = path.join(__dirname, '..', 'fixtures', 'wasm', 'control.wasm');

test('kickOut and a server-side disconnect reach the official client', async () => {
  const server = await startServer({ plugins: ['echo'], extraPlugins: [control] });
  try {
    const socket = await server.connect();
    const channel = socket.subscribe('kickChannel');
    await channel.listener('subscribe').once(5000);

    const kicked = socket.listener('kickOut').once(5000);
    await socket.invoke('kick-me', { channel: 'kickChannel', message: 'you were kicked' });
    const event = await kicked;
    assert.equal(event.channel, 'kickChannel');
    assert.equal(event.message, 'you were kicked');
    assert.equal(socket.isSubscribed('kickChannel', true), false);

    const closed = socket.listener('close').once(5000);
    socket.invoke('close-me', { code: 4321, reason: 'bye' }).catch(() => {});
    const { code } = await closed;
    assert.equal(code, 4321);
  } finally {
    await server.stop();
  }
});
