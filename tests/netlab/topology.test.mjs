// Self-test of the lab's NATs (no server, no browser; a few seconds): the mapping and filtering behaviours the
// other tests rely on are really what lib/netlab.sh builds.
//   eim:        one public port per internal socket, the same towards two destinations (port preserving);
//   symmetric:  a different public port per destination;
//   filtering:  nothing unsolicited from the public side reaches the client;
//   udp-block:  UDP does not leave the home, TCP does;
//   web-only:   no UDP, TCP only to ports 443 and 8080;
//   readdress:  the router's public address moves, the old one is gone.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Lab, missingNetPrerequisite, withTimeout } from './lib/lab.mjs';

const skip = missingNetPrerequisite() || false;
let lab;
after(async () => lab && lab.close());

// A small node program run inside a namespace; prints one JSON line.
function inNs(labRef, node, code, timeout = 8000) {
  return withTimeout(new Promise((resolve, reject) => {
    const p = spawn('ip', ['netns', 'exec', labRef.ns(node), process.execPath, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    labRef.pids.add(p.pid);
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (c) => {
      labRef.pids.delete(p.pid);
      if (c === 0) resolve(JSON.parse(out.trim().split('\n').pop()));
      else reject(new Error(`exit ${c}: ${err}`));
    });
  }), timeout, `node in ${node}`);
}

// UDP echo servers in pub on 203.0.113.1:9001 and 203.0.113.2:9002: they answer with the source they saw; a
// third socket (203.0.113.3:9003) sends an unsolicited probe to the address/port given in a datagram.
const ECHO = `
import dgram from 'node:dgram';
const mk = (addr, port) => new Promise((r) => { const s = dgram.createSocket('udp4'); s.bind(port, addr, () => r(s)); });
const [a, b, c] = await Promise.all([mk('203.0.113.1', 9001), mk('203.0.113.2', 9002), mk('203.0.113.3', 9003)]);
for (const s of [a, b]) s.on('message', (m, r) => {
  const msg = m.toString();
  if (msg.startsWith('probe ')) { const [ip, port] = msg.slice(6).split(':'); c.send('unsolicited', Number(port), ip); }
  s.send(JSON.stringify({ seen: r.address + ':' + r.port }), r.port, r.address);
});
console.log(JSON.stringify({ ready: true }));
setTimeout(() => process.exit(0), 30000);
`;

// From the client: one socket, to both echo servers; then asks for an unsolicited probe to its public mapping.
const CLIENT = `
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4');
await new Promise((r) => s.bind(0, r));
const ask = (msg, port, ip) => new Promise((resolve) => {
  const t = setTimeout(() => { s.removeAllListeners('message'); resolve(null); }, 1500);
  s.once('message', (m) => { clearTimeout(t); resolve(m.toString()); });
  s.send(msg, port, ip);
});
const r1 = await ask('hi', 9001, '203.0.113.1');
const r2 = await ask('hi', 9002, '203.0.113.2');
const seen1 = r1 && JSON.parse(r1).seen, seen2 = r2 && JSON.parse(r2).seen;
let unsolicited = null;
if (seen1) {
  const got = [];
  s.on('message', (m) => got.push(m.toString()));
  s.send('probe ' + seen1, 9001, '203.0.113.1');
  await new Promise((r) => setTimeout(r, 1000));
  unsolicited = got.includes('unsolicited');
}
console.log(JSON.stringify({ local: s.address().port, seen1, seen2, unsolicited }));
process.exit(0);
`;

// TCP connects to 203.0.113.1 on 8080, 443 and 3478: which ones get through.
const TCP = `
import net from 'node:net';
const tryPort = (port) => new Promise((resolve) => {
  const c = net.connect(port, '203.0.113.1', () => { c.destroy(); resolve(true); });
  c.on('error', () => resolve(false));
  setTimeout(() => { c.destroy(); resolve(false); }, 2000);
});
const [tcp, tcp443, tcp3478] = await Promise.all([tryPort(8080), tryPort(443), tryPort(3478)]);
console.log(JSON.stringify({ tcp, tcp443, tcp3478 }));
process.exit(0);
`;
const TCP_SERVER = `
import net from 'node:net';
for (const port of [8080, 443, 3478]) net.createServer((c) => c.end()).listen(port, '203.0.113.1');
console.log(JSON.stringify({ ready: true }));
setTimeout(() => process.exit(0), 30000);
`;

function startBackground(labRef, node, code) {
  const p = spawn('ip', ['netns', 'exec', labRef.ns(node), process.execPath, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  labRef.pids.add(p.pid);
  return withTimeout(new Promise((resolve) => p.stdout.once('data', () => resolve(p))), 5000, `background in ${node}`);
}

test('lab NATs: eim maps port-preserving and endpoint-independently, symmetric per destination, both filter, udp-block, web-only, readdress', { skip, timeout: 60000 }, async () => {
  lab = new Lab('topology');
  await lab.start({ a: { nat: 'eim' }, b: { nat: 'symmetric' } });
  lab.exec('pub', 'ip', ['addr', 'add', '203.0.113.2/24', 'dev', 'br0']);
  lab.exec('pub', 'ip', ['addr', 'add', '203.0.113.3/24', 'dev', 'br0']);
  await startBackground(lab, 'pub', ECHO);
  await startBackground(lab, 'pub', TCP_SERVER);

  const a = await inNs(lab, 'a', CLIENT);
  lab.note(`eim:       local :${a.local} -> seen ${a.seen1} and ${a.seen2}; unsolicited delivered: ${a.unsolicited}`);
  assert.equal(a.seen1, `203.0.113.10:${a.local}`, 'eim preserves the port');
  assert.equal(a.seen2, a.seen1, 'eim: same mapping towards another destination');
  assert.equal(a.unsolicited, false, 'eim filters unsolicited packets');

  const b = await inNs(lab, 'b', CLIENT);
  lab.note(`symmetric: local :${b.local} -> seen ${b.seen1} and ${b.seen2}; unsolicited delivered: ${b.unsolicited}`);
  assert.match(b.seen1, /^203\.0\.113\.20:\d+$/);
  assert.notEqual(b.seen1, b.seen2, 'symmetric: a new mapping per destination');
  assert.equal(b.unsolicited, false, 'symmetric filters unsolicited packets');

  lab.setNat('a', { nat: 'eim', udpBlock: true });
  const blocked = await inNs(lab, 'a', CLIENT);
  const tcp = await inNs(lab, 'a', TCP);
  lab.note(`udp-block: udp reply ${blocked.seen1}, tcp connect ${tcp.tcp}`);
  assert.equal(blocked.seen1, null, 'udp-block: no UDP gets out');
  assert.equal(tcp.tcp, true, 'udp-block: TCP still gets out');
  assert.equal(tcp.tcp3478, true, 'udp-block: TCP to 3478 (TURN over TCP) gets out');

  lab.setNat('a', { nat: 'eim', webOnly: true });
  const web = await inNs(lab, 'a', CLIENT);
  const webTcp = await inNs(lab, 'a', TCP);
  lab.note(`web-only: udp reply ${web.seen1}, tcp 8080 ${webTcp.tcp}, 443 ${webTcp.tcp443}, 3478 ${webTcp.tcp3478}`);
  assert.equal(web.seen1, null, 'web-only: no UDP gets out');
  assert.equal(webTcp.tcp && webTcp.tcp443, true, 'web-only: TCP to 8080 and 443 gets out');
  assert.equal(webTcp.tcp3478, false, 'web-only: TCP to 3478 is blocked');

  lab.setNat('a', { nat: 'eim' });
  lab.readdress('a', '203.0.113.11');
  const moved = await inNs(lab, 'a', CLIENT);
  lab.note(`readdress: now seen as ${moved.seen1}`);
  assert.match(moved.seen1 || '', /^203\.0\.113\.11:/, 'the router uses its new public address');
  await lab.close();
});
