// A protocol v1 client (ping '#1', pong '#2') stays connected and works.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');

for (const flag of ['auto', '1']) {
  test(`protocol v1 client with --ping-protocol ${flag}`, async () => {
    const server = await startServer({
      plugins: ['echo'],
      args: ['--ping-protocol', flag, '--ping-interval-ms', '200', '--ping-timeout-ms', '1000'],
    });
    try {
      const socket = await server.connect({ protocolVersion: 1 });
      let closed = null;
      (async () => { for await (const event of socket.listener('close')) closed = event; })();
      // Several ping timeouts long: the client would close with 4000 if it
      // did not recognise the server's pings.
      await new Promise((resolve) => setTimeout(resolve, 2500));
      assert.equal(closed, null);
      assert.equal(await socket.invoke('echo', 'v1'), 'v1');
    } finally {
      await server.stop();
    }
  });
}

test('protocol v2 client with short ping timeout stays connected', async () => {
  const server = await startServer({
    plugins: ['echo'],
    args: ['--ping-interval-ms', '200', '--ping-timeout-ms', '1000'],
  });
  try {
    const socket = await server.connect();
    let closed = null;
    (async () => { for await (const event of socket.listener('close')) closed = event; })();
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(closed, null);
    assert.equal(await socket.invoke('echo', 'v2'), 'v2');
  } finally {
    await server.stop();
  }
});
