// wasmcluster channel recovery for the unchanged socketcluster-client.
//
// A channel with history (`[channels."PATTERN"]` in the server's config)
// numbers its publications. This helper remembers, per channel, the last
// position the client saw, and puts it in the subscription's data under
// "#recover". socketcluster-client resends that same data object on every
// automatic resubscribe, so after a reconnect the server sends what the
// client missed, in order and once, before anything newer. When it cannot
// (the position is older than the history, or the history started again),
// the server says so and the helper calls your `onUnrecoverable` handler:
// reload the state from your own API there.
//
//   const { withRecovery } = require('./client/recovery.js'); // or <script>: wasmclusterRecovery
//   const recovery = withRecovery(socket, {
//     onUnrecoverable(channel, reason) { reloadRoom(channel); },
//   });
//   const channel = recovery.subscribe('room:lobby');
//   for await (const data of channel) { ... }   // as with socket.subscribe
//
// Works in Node.js and in browsers; no dependencies.
(function (root, factory) {
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.wasmclusterRecovery = factory();
  }
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  const RECOVER_KEY = '#recover';
  const HISTORY_EVENT = 'wasmcluster:history';

  /**
   * Track positions on `socket` (a socketcluster-client socket). Call it
   * before the socket receives anything you want recovered.
   */
  function withRecovery(socket, handlers = {}) {
    // Channel name -> the data object given to socket.subscribe (kept by
    // reference by the client: updating it changes the next resubscribe).
    const tracked = new Map();

    function advance(channel, epoch, offset) {
      const data = tracked.get(channel);
      if (!data || typeof epoch !== 'string' || typeof offset !== 'number') return;
      const seen = data[RECOVER_KEY];
      if (!seen || seen.epoch !== epoch || offset > seen.offset) {
        data[RECOVER_KEY] = { epoch, offset };
      }
    }

    function onHistory(report) {
      if (!report || !tracked.has(report.channel)) return;
      const data = tracked.get(report.channel);
      if (report.recovered === false) {
        // What was missed is gone: start again from where the channel is.
        if (typeof report.epoch === 'string') {
          data[RECOVER_KEY] = { epoch: report.epoch, offset: report.offset };
        }
        if (handlers.onUnrecoverable) {
          handlers.onUnrecoverable(report.channel, report.reason, report);
        }
        return;
      }
      advance(report.channel, report.epoch, report.offset);
      if (handlers.onRecovered && report.missed > 0) {
        handlers.onRecovered(report.channel, report.missed, report);
      }
    }

    function onPacket(packet) {
      if (!packet || typeof packet !== 'object') return;
      if (packet.event === '#publish' && packet.data) {
        advance(packet.data.channel, packet.data.epoch, packet.data.offset);
      } else if (packet.event === HISTORY_EVENT) {
        onHistory(packet.data);
      }
    }

    // Every frame, in the order it arrived, before the channels get it:
    // publications and the server's history reports stay in order.
    (async () => {
      for await (const { message } of socket.listener('message')) {
        if (typeof message !== 'string' || message === '' || message[0] === '#') continue;
        let packet;
        try {
          packet = JSON.parse(message);
        } catch (_) {
          continue;
        }
        if (Array.isArray(packet)) packet.forEach(onPacket);
        else onPacket(packet);
      }
    })();

    return {
      /** `socket.subscribe(name, options)`, recovering what a reconnect misses. */
      subscribe(name, options = {}) {
        const data = Object.assign({}, options.data, { [RECOVER_KEY]: null });
        tracked.set(name, data);
        return socket.subscribe(name, Object.assign({}, options, { data }));
      },
      /** The last position seen on `name`: `{epoch, offset}`, or null. */
      position(name) {
        const data = tracked.get(name);
        return data ? data[RECOVER_KEY] : null;
      },
      /** Stop tracking `name` (after unsubscribing from it). */
      forget(name) {
        tracked.delete(name);
      },
    };
  }

  return { withRecovery, RECOVER_KEY, HISTORY_EVENT };
});
