// Start the real wasmcluster binary on a free port for a test, and connect
// official socketcluster-client sockets to it.
'use strict';

const { spawn } = require('node:child_process');
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const readline = require('node:readline');
const socketClusterClient = require('socketcluster-client');

const repoRoot = path.resolve(__dirname, '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');
const binary = process.env.WASMCLUSTER_BIN || path.join(targetDir, 'release', 'wasmcluster');

/** A plugins directory with copies of the named example plugins. */
function pluginsDir(names) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasmcluster-js-'));
  for (const name of names) {
    const source = path.join(repoRoot, 'plugins', `${name}.wasm`);
    if (!fs.existsSync(source)) {
      throw new Error(`${source} is missing: run \`make plugins\` first (make test does)`);
    }
    fs.copyFileSync(source, path.join(dir, `${name}.wasm`));
  }
  return dir;
}

/** Start the server with the given example plugins, other plugin files
 * (`extraPlugins`, paths), extra flags and, with `config` (TOML text), a
 * config file passed with `--config`. */
async function startServer({ plugins = ['echo', 'chat'], args = [], extraPlugins = [], config } = {}) {
  const dir = pluginsDir(plugins);
  for (const file of extraPlugins) {
    fs.copyFileSync(file, path.join(dir, path.basename(file)));
  }
  if (config !== undefined) {
    // In the plugins directory, which stop() removes; not a .wasm file, so
    // never loaded as a plugin.
    const file = path.join(dir, 'wasmcluster.toml');
    fs.writeFileSync(file, config);
    args = ['--config', file, ...args];
  }
  let log = '';
  const child = spawn(
    binary,
    ['serve', '--host', '127.0.0.1', '--port', '0', '-w', '2', '--plugins', dir,
      '--cache-dir', path.join(targetDir, 'wasm-cache-tests'), ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'info' } },
  );
  child.stderr.on('data', (chunk) => { log += chunk; });
  const lines = readline.createInterface({ input: child.stdout });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 30000);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      const match = /^wasmcluster listening on 127\.0\.0\.1:(\d+)$/.exec(line);
      if (match) resolve(Number(match[1])); else reject(new Error(`unexpected line: ${line}`));
    });
  });
  const sockets = [];
  return {
    port,
    log: () => log,
    /** A connected official client socket. */
    async connect(options = {}) {
      const socket = socketClusterClient.create({
        hostname: '127.0.0.1', port, autoReconnect: false, ackTimeout: 5000, ...options,
      });
      sockets.push(socket);
      await socket.listener('connect').once(5000);
      return socket;
    },
    async stop() {
      for (const socket of sockets) socket.disconnect();
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The next value of an async iterable consumer, or a timeout error. */
async function next(stream, ms = 5000) {
  const consumer = stream.createConsumer(ms);
  try {
    const { value, done } = await consumer.next();
    if (done) throw new Error('stream ended');
    return value;
  } finally {
    consumer.return();
  }
}

/** An auth engine holding `token`, as a browser's localStorage would. */
function tokenEngine(token) {
  let stored = token;
  return {
    async saveToken(name, value) { stored = value; return value; },
    async removeToken() { const old = stored; stored = null; return old; },
    async loadToken() { return stored; },
  };
}

/** A real `redis-server` on a free loopback port, without persistence. */
async function startRedis() {
  const net = require('node:net');
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = probe.address();
      probe.close(() => resolve(free));
    });
  });
  const child = spawn('redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  const deadline = Date.now() + 10000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    url: `redis://127.0.0.1:${port}/0`,
    /** Run `redis-cli` against it; its output. */
    cli(...args) {
      return require('node:child_process')
        .execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' });
    },
    stop() { child.kill('SIGKILL'); },
  };
}

module.exports = { startServer, startRedis, next, tokenEngine };
