// A socketcluster-client script against `make run`: invoke `echo`, then chat
// through `chat`.
//
//   (cd tests/js && npm ci) && node examples/client-demo.js [port]
'use strict';

const path = require('node:path');
const socketClusterClient = require(require.resolve('socketcluster-client', {
  paths: [path.join(__dirname, '..', 'tests', 'js')],
}));

const port = Number(process.argv[2] || process.env.PORT || 8000);

async function main() {
  const ada = socketClusterClient.create({ hostname: '127.0.0.1', port });
  const bob = socketClusterClient.create({ hostname: '127.0.0.1', port });
  await Promise.all([ada.listener('connect').once(), bob.listener('connect').once()]);

  console.log('echo ->', await ada.invoke('echo', { hello: 'world' }));
  console.log('version ->', await ada.invoke('version'));

  const lobby = bob.subscribe('room:lobby');
  await lobby.listener('subscribe').once();
  (async () => {
    for await (const event of lobby) console.log('bob sees', event);
  })();

  await ada.invoke('join', { room: 'lobby', nick: 'ada' });
  await ada.invoke('say', { room: 'lobby', text: 'hello, bob' });
  ada.disconnect();
  await new Promise((resolve) => setTimeout(resolve, 200));
  bob.disconnect();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
