// A plugin invokes a procedure on the official client (`invoke-client`,
// through echo's `ask`): the client's `socket.procedure(name)` answers it
// with `request.end(data)` or `request.error(err)`, as it would answer a
// SocketCluster server's `socket.invoke`.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');

/** Answer every call of procedure `name` with `answer(data, request)`. */
function answerProcedure(socket, name, answer) {
  (async () => {
    for await (const request of socket.procedure(name)) {
      answer(request.data, request);
    }
  })();
}

test('a plugin asks the official client and gets its answer or its error', async () => {
  const server = await startServer({ plugins: ['echo'] });
  try {
    const socket = await server.connect();
    answerProcedure(socket, 'confirm', (data, request) => request.end({ confirmed: data.q }));
    answerProcedure(socket, 'refuse', (data, request) => {
      const error = new Error('not now');
      error.name = 'Refused';
      error.code = 7;
      request.error(error);
    });

    const answer = await socket.invoke('ask', {
      event: 'confirm',
      data: { q: 'delete?' },
      timeout_ms: 5000,
    });
    assert.deepEqual(answer, { confirmed: 'delete?' });

    await assert.rejects(
      socket.invoke('ask', { event: 'refuse', data: 1, timeout_ms: 5000 }),
      (error) => error.name === 'Refused' && error.message === 'not now' && error.code === 7,
    );
    // No procedure handles it: the client never answers.
    await assert.rejects(
      socket.invoke('ask', { event: 'nobody', data: 1, timeout_ms: 300 }),
      (error) => error.name === 'TimeoutError',
    );
  } finally {
    await server.stop();
  }
});
