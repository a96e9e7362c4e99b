// The official client over wss://: the server terminates TLS itself with a
// certificate made for the test (openssl), and a client that does not trust
// it is refused.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { startServer } = require('./server');

/** A self-signed certificate for localhost and 127.0.0.1: file paths and PEM. */
function certificate() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasmcluster-tls-'));
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-days', '1', '-keyout', key, '-out', cert,
  ], { stdio: 'ignore' });
  return { dir, cert, key, pem: fs.readFileSync(cert, 'utf8') };
}

test('socketcluster-client invokes and subscribes over wss://', async () => {
  const tls = certificate();
  const server = await startServer({ plugins: ['echo'], args: ['--tls-cert', tls.cert, '--tls-key', tls.key] });
  try {
    const socket = await server.connect({ secure: true, wsOptions: { ca: tls.pem } });
    assert.deepEqual(await socket.invoke('echo', { secure: true }), { secure: true });
    const channel = socket.subscribe('tls-news');
    await channel.listener('subscribe').once(5000);
    const received = channel.once(5000);
    await socket.invokePublish('tls-news', { headline: 'encrypted' });
    assert.deepEqual(await received, { headline: 'encrypted' });

    // Without the certificate as a trusted root, the client cannot connect.
    await assert.rejects(server.connect({ secure: true, connectTimeout: 3000 }));
    assert.deepEqual(await socket.invoke('echo', 'still served'), 'still served');
  } finally {
    await server.stop();
    fs.rmSync(tls.dir, { recursive: true, force: true });
  }
});
