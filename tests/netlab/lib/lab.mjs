// NAT-traversal lab for node --test: builds the namespace topology of lib/netlab.sh (one "internet" namespace
// with the Switchboard server, two clients each behind its own nftables NAT router), runs `switchboard serve`
// in the public namespace and one headless Chromium per client namespace, and reads the app's state through
// `window.switchboardApp` (same hook as tests/e2e).
//
// Everything is torn down by `lab.close()` (call it in `after()`): browsers and the server by PID, then the
// namespaces (all named `<prefix>-*`, the prefix unique per process). A SIGINT/SIGTERM handler does the same
// synchronously. Nothing here sends traffic outside the lab's namespaces.
//
// Environment:
//   SWITCHBOARD_BIN  the binary (default <repo>/target/debug/switchboard, or $CARGO_TARGET_DIR/debug/switchboard)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   NETLAB_KEEP=1    do not delete the namespaces at the end (inspect them; then lib/netlab.sh down <prefix>)
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../../..');
export const NETLAB_SH = path.join(here, 'netlab.sh');
// playwright-core is installed once, for the browser tests.
const require = createRequire(path.join(REPO, 'tests/e2e/package.json'));
const { chromium } = require('playwright-core');

export const SERVER_IP = '203.0.113.1';
export const HTTP_PORT = 8080;
export const TURN_PORT = 3478;
export const ORIGIN = `http://${SERVER_IP}:${HTTP_PORT}`;
export const API_KEY = 'labkey';
export const API_SECRET = 'lab-secret-0123456789';

// The shared test helpers of the browser suite (one definition for both).
export { serverBin, sleep, until, withTimeout } from '../../e2e/lib/harness.mjs';
import { serverBin, sleep, until, withTimeout } from '../../e2e/lib/harness.mjs';

/** Runs lib/netlab.sh synchronously (throws with its stderr on failure). */
export function netlab(...args) {
  return execFileSync('bash', [NETLAB_SH, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 });
}

/** Why no namespaces with NAT can be built here (not root, no ip/nft), or null. */
export function missingNetPrerequisite() {
  if (process.getuid && process.getuid() !== 0) return 'needs root (network namespaces, nftables)';
  for (const tool of ['ip', 'nft']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch (_) {
      return `${tool} is not installed (apt-get install iproute2 nftables)`;
    }
  }
  return null;
}

/** Why the lab cannot run here (not root, no ip/nft/curl/chromium, no binary), or null. */
export function missingPrerequisite() {
  const net = missingNetPrerequisite();
  if (net) return net;
  try {
    execFileSync('sh', ['-c', 'command -v curl'], { stdio: 'ignore' });
  } catch (_) {
    return 'curl is not installed (reads /metrics inside the lab)';
  }
  const browser = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(browser)) return `no browser at ${browser}`;
  if (!fs.existsSync(serverBin())) return `no server binary at ${serverBin()} (cargo build -p switchboard)`;
  return null;
}

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  // The app is served over plain HTTP from a non-loopback address; getUserMedia needs a secure context.
  `--unsafely-treat-insecure-origin-as-secure=${ORIGIN}`,
  // Raw host IPs in candidates (not mDNS names nobody in the lab can resolve).
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // No --allow-loopback-in-peer-connection: each client has a real interface address in its namespace.
];

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

// Labs alive in this process, for the signal handler.
const live = new Set();
function syncTeardownAll() {
  for (const lab of live) lab.closeSync();
}
let handlersInstalled = false;
function installSignalHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      syncTeardownAll();
      process.exit(130);
    });
  }
  process.once('exit', syncTeardownAll);
}

let labCounter = 0;

export class Lab {
  /**
   * @param {string} name  short label for the log
   */
  constructor(name = 'lab') {
    this.name = name;
    this.prefix = `sbnl${process.pid}${String.fromCharCode(97 + (labCounter++ % 26))}`;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}-`));
    this.pids = new Set(); // every process we started (server, browsers)
    this.browsers = [];
    this.server = null;
    this.up = false;
    this.closed = false;
    this.log = [];
    installSignalHandlers();
    live.add(this);
    this.browserArgs = []; // extra Chromium flags of this lab (e.g. a trusted TURN certificate)
    this.configFile = path.join(this.tmp, 'switchboard.toml');
    fs.writeFileSync(this.configFile, `[auth]\nkeys = { ${API_KEY} = "${API_SECRET}" }\n`);
  }

  note(line) {
    const s = `[netlab ${this.name}] ${line}`;
    this.log.push(s);
    console.log(s);
  }

  /**
   * Builds the topology. `a`/`b`: { nat: 'eim'|'symmetric', udpBlock: bool, webOnly: bool } (webOnly: no UDP and
   * TCP only to ports 443/8080 — a corporate firewall).
   */
  async start({ a = {}, b = {} } = {}) {
    netlab('up', this.prefix);
    this.up = true;
    this.setNat('a', a);
    this.setNat('b', b);
    const fw = (x) => (x.webOnly ? '+web-only' : x.udpBlock ? '+udp-block' : '');
    this.note(`topology ${this.prefix}: A ${a.nat || 'eim'}${fw(a)}, B ${b.nat || 'eim'}${fw(b)}`);
  }

  setNat(side, { nat = 'eim', udpBlock = false, webOnly = false } = {}) {
    netlab('nat', this.prefix, side, nat, webOnly ? 'web-only' : udpBlock ? 'udp-block' : 'none');
  }

  readdress(side, ip) {
    netlab('readdress', this.prefix, side, ip);
  }

  /** Drops `percent` % of side a/b's downlink (what its router forwards to the client) at random, or 'off'. */
  loss(side, percent) {
    netlab('loss', this.prefix, side, String(percent));
  }

  /** Limits side a/b's downlink (what its router forwards to the client) to `rate` ('300kbit'), or 'off'. */
  shape(side, rate) {
    netlab('shape', this.prefix, side, rate);
  }

  ns(node) {
    return `${this.prefix}-${node}`;
  }

  /** Runs a command in one of the lab's namespaces (synchronously). */
  exec(node, cmd, args = [], timeout = 10000) {
    return execFileSync('ip', ['netns', 'exec', this.ns(node), cmd, ...args], { encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /**
   * Starts `switchboard serve` in the public namespace; resolves when it printed `listening http`
   * (and, with TURN, `listening turn-udp`). Options: turn (default true), env (extra), timeoutMs.
   */
  async startServer({ turn = true, env = {}, timeoutMs = 20000 } = {}) {
    const bin = serverBin();
    const args = ['netns', 'exec', this.ns('pub'), bin, 'serve', '-c', this.configFile, '--http', `${SERVER_IP}:${HTTP_PORT}`];
    if (turn) args.push('--turn-port', String(TURN_PORT));
    else args.push('--no-turn');
    const fullEnv = {
      ...process.env,
      RUST_LOG: process.env.RUST_LOG || 'info',
      NO_COLOR: '1',
      SWITCHBOARD_TURN_LISTENING_IP: `["${SERVER_IP}"]`,
      SWITCHBOARD_TURN_RELAY_IP: `["${SERVER_IP}"]`,
      SWITCHBOARD_ICE_HOST: SERVER_IP,
      SWITCHBOARD_TURN_ALLOWED_PEER_IP: '["203.0.113.0/24","10.0.0.0/8"]',
      ...env,
    };
    // `ip netns exec` execs the command: the PID we get is the server's own.
    const proc = spawn('ip', args, { env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    this.pids.add(proc.pid);
    const srv = { proc, pid: proc.pid, log: [], exited: false, exit: null, listening: {} };
    this.server = srv;
    proc.on('exit', (code, signal) => {
      srv.exited = true;
      srv.exit = { code, signal };
      this.pids.delete(proc.pid);
    });
    const ready = new Promise((resolve, reject) => {
      const bufs = { stdout: '', stderr: '' };
      const onData = (which) => (chunk) => {
        bufs[which] += chunk.toString();
        let i;
        while ((i = bufs[which].indexOf('\n')) >= 0) {
          const line = stripAnsi(bufs[which].slice(0, i));
          bufs[which] = bufs[which].slice(i + 1);
          srv.log.push(line);
          if (process.env.NETLAB_SERVER_LOG) fs.appendFileSync(process.env.NETLAB_SERVER_LOG, `${line}\n`);
          if (srv.log.length > 4000) srv.log.splice(0, 2000);
          const m = which === 'stdout' && line.match(/^listening (\S+) (\S+)/);
          if (m) srv.listening[m[1]] = m[2];
          const turnUp = srv.listening['turn-udp'] && (!env.SWITCHBOARD_TURN_CERT || srv.listening['turn-tls']);
          if (srv.listening.http && (!turn || turnUp)) resolve();
        }
      };
      proc.stdout.on('data', onData('stdout'));
      proc.stderr.on('data', onData('stderr'));
      proc.on('error', reject);
      proc.on('exit', (code, signal) => reject(new Error(`server exited (code ${code}, signal ${signal}) before listening:\n${srv.log.join('\n')}`)));
    });
    await withTimeout(ready, timeoutMs, `server "listening" lines:\n${srv.log.join('\n')}`);
    this.note(`server pid ${srv.pid}: ${Object.entries(srv.listening).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    return srv;
  }

  /**
   * A self-signed certificate for the server's public address (openssl, EC P-256, CA:FALSE so rustls/webpki can
   * take it as a trust anchor) and the base64 SHA-256 of its public key, which Chromium's
   * `--ignore-certificate-errors-spki-list` accepts. Returns {cert, key, spki} (file paths, hash).
   */
  selfSignedCertificate() {
    const cert = path.join(this.tmp, 'turn-cert.pem');
    const key = path.join(this.tmp, 'turn-key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
      '-subj', `/CN=${SERVER_IP}`, '-addext', `subjectAltName=IP:${SERVER_IP}`, '-addext', 'basicConstraints=critical,CA:FALSE',
      '-keyout', key, '-out', cert], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10000 });
    const der = execFileSync('openssl', ['x509', '-in', cert, '-noout', '-pubkey'], { encoding: 'utf8' });
    const spkiDer = Buffer.from(der.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const spki = crypto.createHash('sha256').update(spkiDer).digest('base64');
    return { cert, key, spki };
  }

  /** SIGKILLs the server (by PID) and waits for it to be gone. */
  async killServer() {
    const srv = this.server;
    if (!srv || srv.exited) return;
    process.kill(srv.pid, 'SIGKILL');
    await until(() => srv.exited, { timeout: 5000, interval: 50, what: 'server exit after SIGKILL' });
    this.note(`server pid ${srv.pid} killed (SIGKILL)`);
  }

  /** An access token minted with the lab's API key (`switchboard token -c ...`). */
  token(room, identity, name) {
    const out = execFileSync(serverBin(), ['token', '-c', this.configFile, '--room', room, '--identity', identity, '--name', name, '--ttl', '1h'], {
      encoding: 'utf8',
      env: { ...process.env, NO_COLOR: '1' },
      timeout: 10000,
    });
    const tok = out.split(/\s+/).find((w) => /^[\w-]+\.[\w-]+\.[\w-]+$/.test(w));
    if (!tok) throw new Error(`switchboard token printed no JWT: ${out}`);
    return tok;
  }

  /** Launches headless Chromium inside the client namespace `side` ('a' or 'b'). */
  async launchBrowser(side) {
    const wrapper = path.join(this.tmp, `chromium-${side}.sh`);
    const real = process.env.CHROMIUM || '/usr/bin/chromium';
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${this.ns(side)}' '${real}' "$@"\n`, { mode: 0o755 });
    const browser = await withTimeout(
      chromium.launch({ executablePath: wrapper, headless: true, args: [...CHROMIUM_ARGS, ...this.browserArgs] }),
      30000,
      `chromium launch in ${this.ns(side)}`,
    );
    const pid = browser.process?.()?.pid;
    if (pid) this.pids.add(pid);
    this.browsers.push({ browser, pid });
    return browser;
  }

  /**
   * Opens the app in the client namespace `side` and waits until it joined `room`.
   * Returns {side, page, name, id, console}. Options: relay (relay-only), publish (false: a viewer without
   * camera and microphone), simulcast (false: one video layer in SFU rooms), timeout.
   */
  async join(side, room, name, { relay = false, publish = true, simulcast = true, timeout = 20000 } = {}) {
    const browser = await this.launchBrowser(side);
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
    const page = await context.newPage();
    const consoleLines = [];
    page.on('console', (m) => {
      consoleLines.push(`[${m.type()}] ${m.text()}`);
      if (consoleLines.length > 400) consoleLines.splice(0, 200);
    });
    page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
    await context.addInitScript(recordIceRestarts);
    if (process.env.NETLAB_TRACE === '1') await context.addInitScript(traceSignaling);
    const token = this.token(room, `${name.toLowerCase()}-${side}`, name);
    // The app takes `#token=`; a server binary built before that also asks /dev/token, which a server with API
    // keys does not serve: answer that request with the same token.
    await page.route('**/dev/token*', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ token, identity: `${name.toLowerCase()}-${side}` }) }));
    const q = new URLSearchParams({ name });
    if (relay) q.set('relay', '1');
    if (!publish) q.set('publish', '0');
    if (!simulcast) q.set('simulcast', '0');
    await page.goto(`${ORIGIN}/room/${encodeURIComponent(room)}?${q}#token=${token}`, { timeout });
    try {
      await page.waitForFunction(() => window.switchboardApp?.room?.signalingState === 'connected' && !!window.switchboardApp.room.localParticipant, null, { timeout });
    } catch (err) {
      throw new Error(`${name} (${side}) did not join ${room}: ${err.message}\nbrowser console:\n${consoleLines.join('\n')}\nserver log (tail):\n${(this.server?.log || []).slice(-30).join('\n')}`);
    }
    const id = await page.evaluate(() => window.switchboardApp.room.localParticipant.id);
    return { side, page, name, id, console: consoleLines };
  }

  /**
   * Starts the native CLI (`switchboard join <ORIGIN> ...args`) inside the client namespace `side`, its output
   * collected line by line. Returns {proc, pid, stdout, stderr, exited, log(), wait()}; killed by PID in close().
   */
  startCli(side, args, { env = {} } = {}) {
    // `ip netns exec` execs the command: the PID we get is the CLI's own.
    const proc = spawn('ip', ['netns', 'exec', this.ns(side), serverBin(), 'join', ORIGIN, ...args], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', NO_COLOR: '1', RUST_BACKTRACE: '0', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.pids.add(proc.pid);
    const cli = { proc, pid: proc.pid, stdout: [], stderr: [], exited: null };
    for (const [which, stream] of [['stdout', proc.stdout], ['stderr', proc.stderr]]) {
      let buf = '';
      stream.on('data', (chunk) => {
        buf += chunk.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          cli[which].push(stripAnsi(buf.slice(0, i).replace(/\r$/, '')));
          if (cli[which].length > 4000) cli[which].splice(0, 2000);
          buf = buf.slice(i + 1);
        }
      });
    }
    proc.stdin.on('error', () => {}); // EPIPE after the CLI exited
    proc.on('exit', (code, signal) => {
      cli.exited = { code, signal };
      this.pids.delete(proc.pid);
    });
    cli.log = (title = 'cli') => `--- ${title} stdout\n${cli.stdout.join('\n')}\n--- ${title} stderr (tail)\n${cli.stderr.slice(-60).join('\n')}`;
    cli.wait = () => new Promise((resolve) => (cli.exited ? resolve(cli.exited) : proc.on('exit', (code, signal) => resolve({ code, signal }))));
    this.note(`CLI pid ${proc.pid} in ${this.ns(side)}: join ${args.filter((a) => !/^[\w-]+\.[\w-]+\.[\w-]+$/.test(a)).join(' ')}`);
    return cli;
  }

  /** GET a path on the server from inside the public namespace (curl); returns the body, or null if unreachable. */
  httpGet(p) {
    try {
      return this.exec('pub', 'curl', ['-sS', '--max-time', '3', `${ORIGIN}${p}`], 6000);
    } catch (_) {
      return null;
    }
  }

  /** Sum of `turn_relayed_bytes_total` (all directions) from /metrics; null if the server is unreachable. */
  turnRelayedBytes() {
    const body = this.httpGet('/metrics');
    if (body == null) return null;
    let sum = 0;
    for (const line of body.split('\n')) {
      const m = line.match(/^turn_relayed_bytes_total(\{[^}]*\})?\s+([0-9.eE+-]+)/);
      if (m) sum += Number(m[2]);
    }
    return sum;
  }

  /** Synchronous teardown (signal handler / process exit): kill our PIDs, delete our namespaces. */
  closeSync() {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch (_) {
        /* gone */
      }
    }
    this.pids.clear();
    if (this.up && process.env.NETLAB_KEEP !== '1') {
      try {
        netlab('down', this.prefix);
      } catch (_) {
        /* best effort */
      }
    }
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }

  async close() {
    if (this.closed) return;
    for (const { browser, pid } of this.browsers.splice(0)) {
      await withTimeout(browser.close(), 8000, 'browser close').catch(() => {});
      if (pid) {
        try {
          process.kill(pid, 0);
          process.kill(pid, 'SIGKILL');
        } catch (_) {
          /* gone */
        }
        this.pids.delete(pid);
      }
    }
    const srv = this.server;
    if (srv && !srv.exited) {
      try {
        process.kill(srv.pid, 'SIGTERM');
      } catch (_) {
        /* gone */
      }
      await until(() => srv.exited, { timeout: 3000, interval: 50, what: 'server exit' }).catch(() => {
        try {
          process.kill(srv.pid, 'SIGKILL');
        } catch (_) {
          /* gone */
        }
      });
    }
    if (this.up && process.env.NETLAB_KEEP === '1') this.note(`kept namespaces ${this.prefix}-* (remove: ${NETLAB_SH} down ${this.prefix})`);
    this.closeSync();
  }
}

// Records when the page starts an ICE restart (createOffer({iceRestart: true}) or restartIce()), as epoch ms in
// window.__netlabIceRestarts (read by ICE-restart tests).
function recordIceRestarts() {
  window.__netlabIceRestarts = [];
  const proto = window.RTCPeerConnection.prototype;
  const createOffer = proto.createOffer;
  proto.createOffer = function (...args) {
    const opts = args.find((a) => a && typeof a === 'object' && 'iceRestart' in a);
    if (opts?.iceRestart) window.__netlabIceRestarts.push(Date.now());
    return createOffer.apply(this, args);
  };
  const restartIce = proto.restartIce;
  proto.restartIce = function (...args) {
    window.__netlabIceRestarts.push(Date.now());
    return restartIce.apply(this, args);
  };
}

// NETLAB_TRACE=1: log every signaling message type (not its content) and peer-connection state change to the
// browser console with a timestamp, shown in failure messages.
function traceSignaling() {
  const t0 = Date.now();
  const log = (...a) => console.log(`[trace +${Date.now() - t0}ms]`, ...a);
  const NativeWS = window.WebSocket;
  window.WebSocket = class extends NativeWS {
    constructor(...args) {
      super(...args);
      log('ws open', args[0]);
      this.addEventListener('message', (ev) => {
        try {
          const m = JSON.parse(ev.data);
          if (m.type !== 'pong') log('ws <-', m.type, m.from || '', m.type === 'offer' && /a=ice-ufrag:(\S+)/.exec(m.sdp || '')?.[1] || '');
        } catch (_) { /* not JSON */ }
      });
      this.addEventListener('close', (ev) => log('ws close', ev.code));
    }
    send(data) {
      try {
        const m = JSON.parse(data);
        if (m.type !== 'ping') log('ws ->', m.type, m.to || '', this.readyState);
      } catch (_) { /* not JSON */ }
      return super.send(data);
    }
  };
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePC {
    constructor(...args) {
      super(...args);
      this.addEventListener('connectionstatechange', () => log('pc', this.connectionState));
      this.addEventListener('iceconnectionstatechange', () => log('ice', this.iceConnectionState));
      this.addEventListener('signalingstatechange', () => log('sdp', this.signalingState));
    }
  };
}

// ---- reading the app's state ----

/** Per remote participant: path, local/remote candidate types, relay protocol, connection state, media counters. */
export async function peerStats(page) {
  return page.evaluate(async () => {
    const stats = await window.switchboardApp.room.getStats();
    const out = {};
    for (const [id, s] of Object.entries(stats)) {
      out[id] = {
        connectionState: s.connectionState,
        path: s.path,
        local: s.local?.type ?? null,
        remote: s.remote?.type ?? null,
        localAddr: s.local ? `${s.local.address}:${s.local.port}/${s.local.protocol}` : null,
        remoteAddr: s.remote ? `${s.remote.address}:${s.remote.port}/${s.remote.protocol}` : null,
        relayProtocol: s.local?.relayProtocol ?? null,
        framesDecoded: s.video.framesDecoded,
        samples: s.audio.totalSamplesReceived,
        bytesReceived: s.bytesReceived,
      };
    }
    return out;
  });
}

/** Waits until `p` is connected to `peer` and decodes video + plays audio from it; returns its stats. */
/** With `path` ('direct' or 'relay'), also waits until the selected pair is of that kind (ICE may start on a
 * relay pair and move to a direct one a moment later). */
export async function waitConnected(p, peer, timeout = 30000, path = null) {
  let last;
  try {
    return await until(async () => {
      last = (await peerStats(p.page))[peer.id];
      return last && last.connectionState === 'connected' && last.path && (!path || last.path === path) && last.framesDecoded > 0 && last.samples > 0 && last;
    }, { timeout, interval: 500, what: `${p.name} connected to ${peer.name} with media${path ? ` over a ${path} pair` : ''}` });
  } catch (err) {
    throw new Error(`${err.message}\nlast stats: ${JSON.stringify(last)}\n${p.name} console (tail):\n${p.console.slice(-15).join('\n')}`);
  }
}

/** Frames and audio samples `p` received from `peer` over `ms`. */
export async function mediaGrowth(p, peer, ms = 2000) {
  const before = (await peerStats(p.page))[peer.id];
  await sleep(ms);
  const after = (await peerStats(p.page))[peer.id];
  return {
    frames: (after?.framesDecoded ?? 0) - (before?.framesDecoded ?? 0),
    samples: (after?.samples ?? 0) - (before?.samples ?? 0),
    after,
  };
}

export function describePair(s) {
  if (!s || !s.local) return `no selected pair (${s?.connectionState ?? 'no peer connection'})`;
  return `${s.local}${s.relayProtocol ? `(${s.relayProtocol})` : ''} ${s.localAddr} <-> ${s.remote} ${s.remoteAddr} [${s.path}]`;
}
