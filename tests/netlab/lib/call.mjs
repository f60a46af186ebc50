#!/usr/bin/env node
// One call across the NAT lab, by hand: builds the topology, starts the server and two headless browsers,
// prints the selected candidate pairs and the bytes TURN relayed every few seconds, until Ctrl-C (or --hold).
//
//   sudo node tests/netlab/lib/call.mjs [--a eim|symmetric] [--b eim|symmetric] [--udp-block a|b]
//                                       [--no-turn] [--relay] [--hold SECONDS] [--kill-server-after S]
//                                       [--readdress-after S]
// Everything is removed on exit (Ctrl-C included); NETLAB_KEEP=1 keeps the namespaces for inspection.
import { parseArgs } from 'node:util';
import { Lab, missingPrerequisite, peerStats, describePair, sleep } from './lab.mjs';

const { values: o } = parseArgs({
  options: {
    a: { type: 'string', default: 'eim' },
    b: { type: 'string', default: 'eim' },
    'udp-block': { type: 'string' },
    'no-turn': { type: 'boolean', default: false },
    relay: { type: 'boolean', default: false },
    hold: { type: 'string', default: '0' },
    'kill-server-after': { type: 'string' },
    'readdress-after': { type: 'string' },
  },
});

const why = missingPrerequisite();
if (why) {
  console.error(`netlab: ${why}`);
  process.exit(2);
}

const lab = new Lab('call');
let stop = false;
process.on('SIGINT', () => {
  stop = true;
});
try {
  await lab.start({ a: { nat: o.a, udpBlock: o['udp-block'] === 'a' }, b: { nat: o.b, udpBlock: o['udp-block'] === 'b' } });
  await lab.startServer({ turn: !o['no-turn'] });
  const alice = await lab.join('a', 'lab', 'Alice', { relay: o.relay });
  const bob = await lab.join('b', 'lab', 'Bob', { relay: o.relay });
  const t0 = Date.now();
  const hold = Number(o.hold) * 1000;
  let killed = false;
  let moved = false;
  while (!stop && (!hold || Date.now() - t0 < hold)) {
    const s = Math.round((Date.now() - t0) / 1000);
    const sa = (await peerStats(alice.page))[bob.id];
    const sb = (await peerStats(bob.page))[alice.id];
    const turn = lab.server.exited ? 'server down' : `${lab.turnRelayedBytes()} B relayed by TURN`;
    console.log(`+${s}s  A: ${describePair(sa)} frames ${sa?.framesDecoded ?? 0} | B: ${describePair(sb)} frames ${sb?.framesDecoded ?? 0} | ${turn}`);
    if (o['kill-server-after'] && !killed && s >= Number(o['kill-server-after'])) {
      killed = true;
      await lab.killServer();
    }
    if (o['readdress-after'] && !moved && s >= Number(o['readdress-after'])) {
      moved = true;
      lab.readdress('a', '203.0.113.11');
      lab.note('router A re-addressed to 203.0.113.11');
    }
    await sleep(2000);
  }
} catch (err) {
  console.error(err.message);
  process.exitCode = 1;
} finally {
  await lab.close();
}
