// The chat page, on the `chat` example plugin (examples/chat): rooms, a
// room's last messages, live messages, and what a dropped connection missed.
//
// - RPC `rooms` lists the rooms, `join` {room, nick} enters one (creating
//   it), `say` {room, text} sends, `history` {room, limit} answers the
//   room's last events. Events are published on channel `room:<room>`.
// - The channel is read through client/recovery.js, which the server serves
//   at /wasmcluster/recovery.js: after a reconnect the server sends what the
//   page missed, in order and once, before anything newer.
import { create } from '../vendor/socketcluster-client.min.js';

const { withRecovery } = globalThis.wasmclusterRecovery;

/** Events `history` answers when a room is entered. */
const HISTORY_LIMIT = 50;
/** How often the room list is refreshed while connected. */
const ROOMS_EVERY_MS = 15000;

const $ = (id) => document.getElementById(id);

// The page's own host and port, path /socketcluster/.
const socket = create({
  // Back within a second after a cut (the client's default waits 10 s).
  autoReconnectOptions: { initialDelay: 500, randomness: 500, multiplier: 1.5, maxDelay: 5000 },
});

const recovery = withRecovery(socket, {
  onRecovered(channel, missed) {
    if (channel !== current?.channel) return;
    notice(`Recovered ${missed} missed message${missed === 1 ? '' : 's'} after the reconnect.`);
  },
  onUnrecoverable(channel, reason) {
    if (channel !== current?.channel) return;
    if (reason === 'no-history') {
      notice('This room keeps no history: messages sent while you were away are lost.', 'warning');
      return;
    }
    notice(`Could not recover what you missed (${reason}): reloaded the room's last messages.`, 'warning');
    // A load under way already covers it.
    if (!current.pending) load(current);
  },
});

/**
 * The room the page is in: `{room, nick, channel, pending, rejoin}`.
 * `pending` keeps the live events that arrive while `history` is asked
 * (null otherwise); `rejoin` is set when the connection dropped, since the
 * plugin forgets a socket's nick and rooms when it disconnects.
 */
let current = null;

/** Enter `room` as `nick`: subscribe, join, then show its last messages. */
async function enter(room, nick) {
  if (current) leave(current);
  const entered = { room, nick, channel: `room:${room}`, pending: [], rejoin: false };
  current = entered;
  localStorage.setItem('wasmcluster-chat-nick', nick);
  history.replaceState(null, '', `#${encodeURIComponent(room)}`);
  $('title').textContent = `#${room} as ${nick}`;
  $('messages').replaceChildren();
  $('notice').hidden = true;
  updateControls();

  // Subscribed first, so that nothing published from now on is missed.
  const channel = recovery.subscribe(entered.channel);
  (async () => {
    for await (const event of channel) {
      if (current !== entered) break;
      if (entered.pending) entered.pending.push(event);
      else show(event);
    }
  })();
  try {
    await socket.invoke('join', { room, nick });
  } catch (error) {
    notice(`Could not join #${room}: ${error.message}`, 'warning');
  }
  await load(entered);
  refreshRooms();
}

/** Stop reading a room's channel. */
function leave(left) {
  socket.unsubscribe(left.channel);
  socket.closeChannel(left.channel);
  recovery.forget(left.channel);
}

/** Show the room's last messages, then the live ones that came meanwhile,
 * each once. */
async function load(entered) {
  entered.pending = entered.pending || [];
  let events = [];
  try {
    events = await socket.invoke('history', { room: entered.room, limit: HISTORY_LIMIT });
  } catch (error) {
    notice(`No history for #${entered.room}: ${error.message}`, 'warning');
  }
  if (current !== entered) return;
  const live = entered.pending;
  entered.pending = null;
  $('messages').replaceChildren();
  for (const event of merge(events, live)) show(event);
}

/**
 * `events` (the `history` answer, oldest first) then `live` (what the
 * channel delivered from the subscription until that answer), with what
 * both hold once. The server writes a socket's queued publications before
 * an RPC's answer, so what both hold is a tail of `events` and a head of
 * `live`. `history` answers events without their offsets, so that overlap
 * is found by content: the longest tail of `events` that `live` starts with.
 */
function merge(events, live) {
  const tail = events.map(key);
  const head = live.map(key);
  for (let n = Math.min(tail.length, head.length); n > 0; n -= 1) {
    const start = tail.length - n;
    if (head.slice(0, n).every((item, i) => item === tail[start + i])) {
      return events.concat(live.slice(n));
    }
  }
  return events.concat(live);
}

/** An event's content, whatever the order of its keys (the plugin's
 * `history` answer sorts them; a publication keeps the plugin's order). */
function key(event) {
  if (event === null || typeof event !== 'object') return JSON.stringify(event);
  return JSON.stringify(event, Object.keys(event).sort());
}

/** Append one event of the room. */
function show(event) {
  const item = document.createElement('li');
  const nick = document.createElement('b');
  nick.textContent = event?.nick ?? '?';
  switch (event?.type) {
    case 'say':
      item.append(nick, `: ${event.text}`);
      break;
    case 'join':
      item.className = 'event';
      item.append(nick, ' joined');
      break;
    case 'leave':
      item.className = 'event';
      item.append(nick, ' left');
      break;
    default:
      item.textContent = JSON.stringify(event);
  }
  if (event?.nick === current?.nick) item.classList.add('mine');
  const list = $('messages');
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

/** Say something in the notice line. */
function notice(text, kind = 'info') {
  const line = $('notice');
  line.textContent = text;
  line.className = kind;
  line.hidden = false;
}

/** List the rooms (the first page of `rooms`: 50). */
async function refreshRooms() {
  let rooms;
  try {
    ({ rooms } = await socket.invoke('rooms', {}));
  } catch (_) {
    return;
  }
  const list = $('rooms');
  list.replaceChildren(...rooms.map(({ room, messages }) => {
    const button = document.createElement('button');
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = messages;
    count.title = 'messages';
    button.append(`#${room}`, count);
    button.type = 'button';
    button.dataset.room = room;
    if (room === current?.room) button.classList.add('current');
    const item = document.createElement('li');
    item.append(button);
    return item;
  }));
  if (rooms.length === 0) list.innerHTML = '<li class="empty">none yet</li>';
}

function setState(state, text) {
  $('state').dataset.state = state;
  $('state').textContent = text;
  updateControls();
}

function updateControls() {
  const usable = current !== null && socket.state === socket.OPEN;
  $('text').disabled = !usable;
  $('say').querySelector('button').disabled = !usable;
}

// Connection state, and a rejoin after every reconnect.
let everConnected = false;
(async () => {
  for await (const _ of socket.listener('connecting')) {
    setState(navigator.onLine ? 'connecting' : 'offline', everConnected ? 'reconnecting…' : 'connecting…');
  }
})();
(async () => {
  for await (const _ of socket.listener('close')) {
    if (current && everConnected) current.rejoin = true;
    setState(navigator.onLine ? 'reconnecting' : 'offline', navigator.onLine ? 'reconnecting…' : 'offline');
  }
})();
(async () => {
  for await (const _ of socket.listener('connect')) {
    everConnected = true;
    setState('connected', 'connected');
    refreshRooms();
    if (current?.rejoin) {
      current.rejoin = false;
      socket.invoke('join', { room: current.room, nick: current.nick })
        .catch((error) => notice(`Could not join #${current.room} again: ${error.message}`, 'warning'));
    }
  }
})();
setInterval(() => {
  if (socket.state === socket.OPEN) refreshRooms();
}, ROOMS_EVERY_MS);

// Back online: connect now rather than at the next attempt of the back-off.
addEventListener('online', () => {
  if (socket.state === socket.CLOSED) socket.connect();
  else if (socket.state === socket.OPEN) setState('connected', 'connected');
});
addEventListener('offline', () => setState('offline', 'offline'));

$('join').addEventListener('submit', (submitted) => {
  submitted.preventDefault();
  const nick = $('nick').value.trim();
  const room = $('room').value.trim();
  if (nick && room) enter(room, nick);
});

$('rooms').addEventListener('click', (clicked) => {
  const room = clicked.target.closest('button')?.dataset.room;
  if (!room) return;
  $('room').value = room;
  const nick = $('nick').value.trim();
  if (nick) enter(room, nick);
  else $('nick').focus();
});

$('say').addEventListener('submit', async (submitted) => {
  submitted.preventDefault();
  const text = $('text').value.trim();
  if (!text || !current) return;
  $('text').value = '';
  try {
    await socket.invoke('say', { room: current.room, text });
  } catch (error) {
    notice(`Not sent: ${error.message}`, 'warning');
    $('text').value = text;
  }
});

// A nick from the last visit, a room from the address (#lobby): enter it.
$('nick').value = localStorage.getItem('wasmcluster-chat-nick') || '';
$('room').value = decodeURIComponent(location.hash.slice(1));
if ($('nick').value && $('room').value) enter($('room').value, $('nick').value);
