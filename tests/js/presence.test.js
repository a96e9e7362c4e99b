// The `presence` example plugin with the official client: members of a room
// are announced as `left` when they close cleanly and as `lost` (with the
// close code) when their connection is cut, on every worker.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./server');

/** Every event of a channel, kept from now on, and a bounded wait for one. */
function collect(channel) {
  const events = [];
  let wake = () => {};
  (async () => {
    for await (const event of channel) {
      events.push(event);
      wake();
    }
  })();
  return {
    events,
    /** What `check` returns once it is truthy, or an error after `ms`. */
    async waitUntil(check, ms = 5000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = check();
        if (found) return found;
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new Error(`not there after ${ms} ms; events: ${JSON.stringify(events)}`);
        }
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => { clearTimeout(timer); resolve(); };
        });
      }
    },
    /** The first event (kept or coming) that matches, or an error after `ms`. */
    waitFor(matches, ms = 5000) {
      return this.waitUntil(() => events.find(matches), ms);
    },
  };
}

/** Subscribe to a room's presence channel and collect its events. */
async function watch(socket, room) {
  const channel = socket.subscribe(`presence:${room}`);
  await channel.listener('subscribe').once(5000);
  return collect(channel);
}

/** The first event about socket `id` other than its `joined`. */
const departureOf = (id) => (event) => event.id === id && event.type !== 'joined';

test('a clean close is announced as left, a cut connection as lost with 1006', async () => {
  // chat is loaded too: presence's events must not collide with chat's.
  const server = await startServer({ plugins: ['chat', 'presence'] });
  try {
    const ada = await server.connect();
    const bob = await server.connect();
    const lobby = await watch(bob, 'lobby');

    const afterAda = await ada.invoke('presence.join', { room: 'lobby', name: 'ada' });
    assert.deepEqual(afterAda, [{ id: ada.id, name: 'ada' }]);
    await lobby.waitFor((e) => e.type === 'joined' && e.id === ada.id);
    const afterBob = await bob.invoke('presence.join', { room: 'lobby', name: 'bob' });
    assert.deepEqual(
      afterBob.map((m) => m.name).sort(), ['ada', 'bob'],
      'the join answers every member, the joiner included',
    );

    // Clean close: the client sends a close frame with 1000. (The client
    // forgets its id when it closes: keep it.)
    const adaId = ada.id;
    ada.disconnect();
    const adaLeft = await lobby.waitFor(departureOf(adaId));
    assert.deepEqual(adaLeft, { type: 'left', id: adaId, name: 'ada' });

    const cy = await server.connect();
    await cy.invoke('presence.join', { room: 'lobby', name: 'cy' });
    await lobby.waitFor((e) => e.type === 'joined' && e.id === cy.id);
    assert.deepEqual(
      (await bob.invoke('presence.members', { room: 'lobby' })).map((m) => m.name).sort(),
      ['bob', 'cy'],
    );

    // Cut the TCP connection under the client's WebSocket (socketcluster-client
    // -> ws -> net.Socket): no close frame is sent, the server sees 1006.
    const cyId = cy.id;
    const tcp = cy.transport.socket._socket;
    assert.ok(tcp && typeof tcp.destroy === 'function', 'found the net.Socket of the client');
    tcp.destroy();
    const cyLost = await lobby.waitFor(departureOf(cyId));
    assert.deepEqual(cyLost, { type: 'lost', id: cyId, name: 'cy', code: 1006 });

    assert.deepEqual(await bob.invoke('presence.members', { room: 'lobby' }), [
      { id: bob.id, name: 'bob' },
    ]);
  } finally {
    await server.stop();
  }
});

test('leave, rename, errors, and many sockets joining at once on two workers', async () => {
  const server = await startServer({ plugins: ['presence'] });
  try {
    const watcher = await server.connect();
    const hall = await watch(watcher, 'hall');

    // 20 sockets, spread over the 2 workers, join at the same moment: none
    // is lost (each takes its own slot with an atomic kv incr).
    const sockets = await Promise.all(Array.from({ length: 20 }, () => server.connect()));
    await Promise.all(sockets.map((s, i) => s.invoke('presence.join', { room: 'hall', name: `n${i}` })));
    const ids = sockets.map((s) => s.id);
    const members = await watcher.invoke('presence.members', { room: 'hall' });
    assert.deepEqual(
      members.map((m) => m.id).sort(), [...ids].sort(),
      'every socket that joined is a member',
    );

    // Join without a name; join again with a name renames.
    const anon = sockets[0];
    const anonId = anon.id;
    await anon.invoke('presence.leave', { room: 'hall' });
    assert.deepEqual(
      await hall.waitFor(departureOf(anonId)), { type: 'left', id: anonId, name: 'n0' },
    );
    await assert.rejects(anon.invoke('presence.leave', { room: 'hall' }), {
      name: 'NotJoinedError', room: 'hall',
    });
    await anon.invoke('presence.join', { room: 'hall' });
    await hall.waitFor((e) => e.type === 'joined' && e.id === anon.id && e.name === null);
    await anon.invoke('presence.join', { room: 'hall', name: 'renamed' });
    await hall.waitFor((e) => e.type === 'joined' && e.id === anon.id && e.name === 'renamed');
    const again = await watcher.invoke('presence.members', { room: 'hall' });
    assert.equal(again.length, 20, 'a rename does not add a member');
    assert.equal(again.find((m) => m.id === anon.id).name, 'renamed');

    await assert.rejects(watcher.invoke('presence.join', { room: '' }), {
      name: 'InvalidDataError',
    });
    await assert.rejects(watcher.invoke('presence.members', {}), { name: 'InvalidDataError' });

    // Every socket closes cleanly: each is announced once more (anon's
    // earlier leave was the first), as left; the room empties.
    const departures = () => hall.events.filter((e) => e.type !== 'joined');
    for (const s of sockets) s.disconnect();
    await hall.waitUntil(() => departures().length >= 21);
    assert.deepEqual(
      departures().map((e) => e.id).sort(), [...ids, anonId].sort(),
    );
    assert.ok(departures().every((e) => e.type === 'left'), JSON.stringify(departures()));
    assert.deepEqual(await watcher.invoke('presence.members', { room: 'hall' }), []);
  } finally {
    await server.stop();
  }
});
