// SocketCluster server with the same handlers as wasmcluster's `echo` plugin,
// for side-by-side benchmarks: RPC `echo` answers its data, transmit `ping`
// is answered with transmit `pong`, RPC `later` publishes after a delay
// (setTimeout), client publish is allowed (the default).
//
//   node server.js [port]    prints "socketcluster listening on 127.0.0.1:PORT"
'use strict';

const http = require('node:http');
const socketClusterServer = require('socketcluster-server');

const httpServer = http.createServer();
const agServer = socketClusterServer.attach(httpServer);

(async () => {
  for await (const { socket } of agServer.listener('connection')) {
    (async () => {
      for await (const request of socket.procedure('echo')) request.end(request.data);
    })();
    (async () => {
      for await (const data of socket.receiver('ping')) socket.transmit('pong', data);
    })();
    // `later` as echo's: publish on `channel` after `delay_ms`.
    (async () => {
      for await (const request of socket.procedure('later')) {
        const { delay_ms: delay, channel, data } = request.data;
        setTimeout(() => agServer.exchange.transmitPublish(channel, data), delay);
        request.end(null);
      }
    })();
  }
})();

httpServer.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  const { address, port } = httpServer.address();
  console.log(`socketcluster listening on ${address}:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
