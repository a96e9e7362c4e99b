// A protocol v1 client (ping '#1', pong '#2') stays connected and works, and
// so does a v2 client, with a ping timeout short enough to notice.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');

const SHORT_PINGS = ['--ping-interval-ms', '200', '--ping-timeout-ms', '1000'];

/** Connect with `clientOptions`, stay connected over several ping timeouts
 * (a client that did not recognise the server's pings would close with
 * 4000), then make a call. */
async function staysConnected(serverArgs, clientOptions, data) {
  const server = await startServer({ plugins: ['echo'], args: [...serverArgs, ...SHORT_PINGS] });
  try {
    const socket = await server.connect(clientOptions);
    let closed = null;
    (async () => { for await (const event of socket.listener('close')) closed = event; })();
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(closed, null);
    assert.equal(await socket.invoke('echo', data), data);
  } finally {
    await server.stop();
  }
}

for (const flag of ['auto', '1']) {
  test(`protocol v1 client with --ping-protocol ${flag}`, async () => {
    await staysConnected(['--ping-protocol', flag], { protocolVersion: 1 }, 'v1');
  });
}

test('protocol v2 client with short ping timeout stays connected', async () => {
  await staysConnected([], {}, 'v2');
});
