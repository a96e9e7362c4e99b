// The official socketcluster-client, unchanged, against wasmcluster.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer, next } = require('./server');

let server;
test.before(async () => { server = await startServer(); });
test.after(async () => { await server.stop(); });

test('connects with a handshake', async () => {
  const socket = await server.connect();
  assert.equal(socket.state, socket.OPEN);
  assert.equal(typeof socket.id, 'string');
  assert.equal(socket.id.length, 20);
  assert.equal(socket.authState, socket.UNAUTHENTICATED);
  socket.disconnect();
});

test('invoke returns the plugin result', async () => {
  const socket = await server.connect();
  assert.deepEqual(await socket.invoke('echo', { hello: 'world', n: [1, 2] }), { hello: 'world', n: [1, 2] });
  assert.deepEqual(await socket.invoke('version'), { plugin: 'echo', version: '0.1.0' });
  socket.disconnect();
});

test('a failing RPC rejects with a proper error object', async () => {
  const socket = await server.connect();
  await assert.rejects(socket.invoke('fail', 1), (error) => {
    assert.equal(error.name, 'EchoFailure');
    assert.equal(error.message, 'echo failed on purpose');
    return true;
  });
  await assert.rejects(socket.invoke('noSuchEvent', 1), (error) => {
    assert.equal(error.name, 'UnknownEventError');
    assert.match(error.message, /noSuchEvent/);
    return true;
  });
  await assert.rejects(socket.invoke('crash'), (error) => {
    assert.equal(error.name, 'PluginError');
    return true;
  });
  assert.equal(await socket.invoke('echo', 'after crash'), 'after crash');
  assert.equal(socket.state, socket.OPEN);
  socket.disconnect();
});

test('transmit reaches the plugin, which transmits back', async () => {
  const socket = await server.connect();
  const pong = next(socket.receiver('pong'));
  socket.transmit('ping', { n: 42 });
  assert.deepEqual(await pong, { n: 42 });
  socket.disconnect();
});

test('subscribe receives what other clients and plugins publish', async () => {
  const alice = await server.connect();
  const bob = await server.connect();
  const channel = alice.subscribe('broadcast:news');
  await channel.listener('subscribe').once(5000);

  let got = next(channel);
  await bob.invokePublish('broadcast:news', { from: 'bob', ack: true });
  assert.deepEqual(await got, { from: 'bob', ack: true });

  got = next(channel);
  bob.transmitPublish('broadcast:news', 'without ack');
  assert.equal(await got, 'without ack');

  got = next(channel);
  await bob.invoke('broadcast', { channel: 'broadcast:news', data: { from: 'plugin' } });
  assert.deepEqual(await got, { from: 'plugin' });

  alice.disconnect();
  bob.disconnect();
});

test('a plugin timer publishes later, and subs lists the channels', async () => {
  const alice = await server.connect();
  const channel = alice.subscribe('broadcast:later');
  await channel.listener('subscribe').once(5000);
  assert.deepEqual(await alice.invoke('subs'), ['broadcast:later']);

  const got = next(channel);
  assert.equal(await alice.invoke('later', { delay_ms: 100, channel: 'broadcast:later', data: { at: 'later' } }), null);
  assert.deepEqual(await got, { at: 'later' });
  alice.disconnect();
});

test('unsubscribe stops delivery', async () => {
  const alice = await server.connect();
  const bob = await server.connect();
  const channel = alice.subscribe('sports');
  await channel.listener('subscribe').once(5000);
  alice.unsubscribe('sports');
  assert.equal(alice.isSubscribed('sports', true), false);
  // A round trip makes sure the server has processed the unsubscribe.
  await alice.invoke('echo', 'sync');

  const received = [];
  (async () => { for await (const data of alice.channel('sports')) received.push(data); })();
  await bob.invokePublish('sports', 'nobody should get this');
  await alice.invoke('echo', 'sync again');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(received, []);
  alice.disconnect();
  bob.disconnect();
});

test('disconnect closes cleanly with 1000', async () => {
  const socket = await server.connect();
  const closed = socket.listener('close').once(5000);
  socket.disconnect();
  const { code } = await closed;
  assert.equal(code, 1000);
  assert.equal(socket.state, socket.CLOSED);
});

test('chat: join, say, and leave on disconnect', async () => {
  const alice = await server.connect();
  const bob = await server.connect();
  const room = bob.subscribe('room:lobby');
  await room.listener('subscribe').once(5000);

  let event = next(room);
  assert.deepEqual(await alice.invoke('join', { room: 'lobby', nick: 'alice' }), { room: 'lobby', nick: 'alice' });
  assert.deepEqual(await event, { type: 'join', nick: 'alice' });

  event = next(room);
  await alice.invoke('say', { room: 'lobby', text: 'hi bob' });
  assert.deepEqual(await event, { type: 'say', nick: 'alice', text: 'hi bob' });

  await assert.rejects(bob.invoke('say', { room: 'lobby', text: 'not joined' }), { name: 'NotJoinedError' });

  event = next(room);
  alice.disconnect();
  assert.deepEqual(await event, { type: 'leave', nick: 'alice' });
  bob.disconnect();
});
