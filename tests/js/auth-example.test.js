// The `auth` example plugin with the official client, on a server that
// requires authentication: login with Argon2-hashed passwords from the
// config file, private channels, logout, and the token kept across a
// reconnect.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');

// Fixture data: Argon2id hashes (m=19456 KiB, t=2, p=1, the parameters the
// plugin's docs recommend) made once with Python's argon2-cffi:
//   PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(password)
const USERS = {
  alice: {
    password: 'correct horse battery staple',
    hash: '$argon2id$v=19$m=19456,t=2,p=1$2tZMw74if4ggGmQkAVQozg$26VB7US9K9QeTR8j2JHSSSRZwh37wxe7Kd82x+jDh90',
  },
  bob: {
    password: 'hunter2-but-longer',
    hash: '$argon2id$v=19$m=19456,t=2,p=1$KOEW5zKLbHSUpm8llHpM+A$tMYBjXBYLY4R16q53XDlbudrTMRZBB/3gbL0OODT9Kc',
  },
};

// One password check takes about 30 ms in the plugin on a fast machine; the
// deadline is wall-clock time and test machines are busy, so it is raised
// well above the default 100 ms (as examples/wasmcluster.toml does).
const CONFIG = `
[plugin.auth]
deadline-ms = 2000
config = { users = { ${Object.entries(USERS).map(([name, { hash }]) => `${name} = "${hash}"`).join(', ')} } }
`;

/** Subscribe (or find the channel subscribed already, as it is again after
 * a reconnect) and resolve with the outcome: subscribed, or the error. */
async function subscribeOutcome(socket, name, ms = 5000) {
  const channel = socket.subscribe(name);
  if (channel.state === channel.SUBSCRIBED) return { channel, subscribed: true };
  const subscribed = channel.listener('subscribe').createConsumer();
  const failed = channel.listener('subscribeFail').createConsumer();
  let timer;
  try {
    return await Promise.race([
      subscribed.next().then(() => ({ channel, subscribed: true })),
      failed.next().then(({ value }) => ({ channel, error: value.error })),
      new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer to subscribing ${name} in ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    subscribed.return();
    failed.return();
  }
}

/** The server log once it matches `pattern` (stderr and stdout are two
 * pipes: the log line may come after the "listening" line). */
async function logMatching(server, pattern, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pattern.test(server.log())) {
    if (Date.now() > deadline) assert.fail(`the log does not match ${pattern}:\n${server.log()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return server.log();
}

test('login, private channels, logout, and the token across a reconnect', async () => {
  const server = await startServer({
    plugins: ['chat', 'auth'], args: ['--require-auth'], config: CONFIG,
  });
  try {
    const socket = await server.connect();
    assert.equal(socket.authState, socket.UNAUTHENTICATED);

    // Not logged in: only the public `login` RPC is allowed.
    await assert.rejects(socket.invoke('join', { room: 'lobby', nick: 'alice' }), {
      name: 'AuthRequiredError',
    });

    // A wrong password and an unknown user get the same error and message.
    const wrongPassword = await socket
      .invoke('login', { username: 'alice', password: 'not it' })
      .then(() => assert.fail('logged in with a wrong password'), (error) => error);
    const unknownUser = await socket
      .invoke('login', { username: 'mallory', password: USERS.alice.password })
      .then(() => assert.fail('logged in as an unknown user'), (error) => error);
    assert.equal(wrongPassword.name, 'LoginFailedError');
    assert.equal(unknownUser.name, 'LoginFailedError');
    assert.equal(unknownUser.message, wrongPassword.message);
    assert.equal(socket.authState, socket.UNAUTHENTICATED);
    await assert.rejects(socket.invoke('login', { username: 'alice' }), {
      name: 'InvalidDataError',
    });

    // The right password: the token arrives before the answer.
    const answer = await socket.invoke('login', {
      username: 'alice', password: USERS.alice.password,
    });
    assert.deepEqual(answer, { username: 'alice' });
    assert.equal(socket.authState, socket.AUTHENTICATED);
    assert.equal(socket.authToken.username, 'alice');
    assert.deepEqual(await socket.invoke('join', { room: 'lobby', nick: 'alice' }), {
      room: 'lobby', nick: 'alice',
    });

    // Her own private channel works (and carries publications); bob's is denied.
    const own = await subscribeOutcome(socket, 'private:alice');
    assert.equal(own.subscribed, true, `private:alice was refused: ${own.error && own.error.message}`);
    const consumer = own.channel.createConsumer(5000);
    await socket.invokePublish('private:alice', { note: 'to myself' });
    assert.deepEqual((await consumer.next()).value, { note: 'to myself' });
    consumer.return();

    const other = await subscribeOutcome(socket, 'private:bob');
    assert.ok(other.error, 'private:bob was allowed for alice');
    assert.equal(other.error.name, 'SubscribeForbidden');
    assert.equal(socket.isSubscribed('private:bob', true), false);
    const open = await subscribeOutcome(socket, 'news');
    assert.equal(open.subscribed, true, 'a channel outside private: is left alone');

    // Reconnect: the client sends its token in the handshake and is
    // authenticated again without logging in.
    socket.disconnect();
    socket.connect();
    const status = await socket.listener('connect').once(5000);
    assert.equal(status.isAuthenticated, true);
    assert.equal(socket.authState, socket.AUTHENTICATED);
    assert.equal(socket.authToken.username, 'alice');
    assert.deepEqual(await socket.invoke('join', { room: 'lobby', nick: 'alice' }), {
      room: 'lobby', nick: 'alice',
    });
    // The client subscribes again to its channels; the hook allows it again.
    assert.equal((await subscribeOutcome(socket, 'private:alice')).subscribed, true);

    // Logout removes the token: back to AuthRequiredError.
    const deauthenticated = socket.listener('deauthenticate').once(5000);
    await socket.invoke('logout');
    await deauthenticated;
    assert.equal(socket.authState, socket.UNAUTHENTICATED);
    await assert.rejects(socket.invoke('join', { room: 'lobby', nick: 'alice' }), {
      name: 'AuthRequiredError',
    });

    // Another user on another socket: bob gets his own channel, not alice's.
    const bob = await server.connect();
    await bob.invoke('login', { username: 'bob', password: USERS.bob.password });
    assert.equal((await subscribeOutcome(bob, 'private:bob')).subscribed, true);
    assert.equal((await subscribeOutcome(bob, 'private:alice')).error.name, 'SubscribeForbidden');
  } finally {
    await server.stop();
  }
});

test('a hash that does not parse refuses the plugin with the user in the message', async () => {
  const server = await startServer({
    plugins: ['auth'],
    config: '[plugin.auth]\nconfig = { users = { carol = "$argon2id$not-a-hash" } }\n',
  });
  try {
    await logMatching(server, /auth: the hash of user 'carol' is not a PHC string/);
    const socket = await server.connect();
    // The plugin was refused, so nothing handles `login`.
    await assert.rejects(socket.invoke('login', { username: 'carol', password: 'x' }), {
      name: 'UnknownEventError',
    });
  } finally {
    await server.stop();
  }
});

test('a config without users refuses the plugin and says what it needs', async () => {
  const server = await startServer({ plugins: ['auth'] });
  try {
    await logMatching(server, /auth: the config must be \{"users": \{"<username>": "<argon2 PHC hash>"\}\}/);
  } finally {
    await server.stop();
  }
});
