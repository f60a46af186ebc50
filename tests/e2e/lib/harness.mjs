// Shared harness for the browser end-to-end tests: starts `switchboard serve` on ephemeral ports, launches
// Debian's headless Chromium with a fake camera/microphone, opens participants in the demo app, and reads their
// state through the app's documented test hook `window.switchboardApp`. Everything it starts is stopped by
// `h.close()` (by PID; browsers and servers, also when a test fails) — call it in `after()`.
//
// Environment:
//   SWITCHBOARD_BIN   the binary (default: $CARGO_TARGET_DIR/debug/switchboard, else <repo>/target/debug/switchboard)
//   SWITCHBOARD_MOCK=1  develop the web client against tests/e2e/lib/mock-server.mjs (+ coturn) instead of the
//                       Rust server. Never set by scripts/test.sh; results with it say nothing about the server.
//   E2E_HEADFUL=1     show the browser (needs a display)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../../..');
export const ARTIFACTS = path.resolve(here, '../artifacts');

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

export function serverBin() {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN;
  if (process.env.CARGO_TARGET_DIR) return path.join(process.env.CARGO_TARGET_DIR, 'debug', 'switchboard');
  return path.join(REPO, 'target', 'debug', 'switchboard');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (async ok) until it returns a truthy value; returns it. Throws with `what` and the last value on timeout. */
export async function until(fn, { timeout = 20000, interval = 250, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await sleep(interval);
  }
}

function freePort(type = 'tcp') {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    void type;
  });
}

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** A started server process (Rust binary, or the mock in SWITCHBOARD_MOCK mode). */
class ServerProcess {
  constructor(proc, extra = []) {
    this.proc = proc;
    this.pid = proc.pid;
    this.extra = extra; // companion processes (coturn for the mock)
    this.log = [];
    this.exited = false;
    this.exitInfo = null;
    this.url = null;
    proc.on('exit', (code, signal) => {
      this.exited = true;
      this.exitInfo = { code, signal };
    });
  }
  get wsUrl() {
    return this.url.replace(/^http/, 'ws') + '/ws';
  }
  logText() {
    return this.log.join('\n');
  }
  /** Sends `signal` to this server's PID only. */
  kill(signal = 'SIGTERM') {
    if (!this.exited) {
      try {
        process.kill(this.pid, signal);
      } catch (_) {
        /* already gone */
      }
    }
  }
  async stop() {
    for (const p of this.extra) {
      try {
        if (p.exitCode === null && p.signalCode === null) process.kill(p.pid, 'SIGKILL');
      } catch (_) {
        /* gone */
      }
    }
    if (this.exited) return;
    this.kill('SIGTERM');
    const gone = await until(() => this.exited, { timeout: 3000, interval: 50, what: 'server exit' }).catch(() => false);
    if (!gone) this.kill('SIGKILL');
    await until(() => this.exited, { timeout: 3000, interval: 50, what: 'server exit after SIGKILL' }).catch(() => {});
  }
}

async function spawnServer(cmd, args, env, timeoutMs) {
  const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const sp = new ServerProcess(proc);
  let buf = { stdout: '', stderr: '' };
  const url = new Promise((resolve, reject) => {
    const onData = (which) => (chunk) => {
      buf[which] += chunk.toString();
      let i;
      while ((i = buf[which].indexOf('\n')) >= 0) {
        const line = stripAnsi(buf[which].slice(0, i));
        buf[which] = buf[which].slice(i + 1);
        sp.log.push(line);
        if (process.env.E2E_SERVER_LOG) fs.appendFileSync(process.env.E2E_SERVER_LOG, `${line}\n`);
        if (sp.log.length > 5000) sp.log.splice(0, 2500);
        const m = which === 'stdout' && line.match(/listening http (http:\/\/127\.0\.0\.1:\d+)/);
        if (m) resolve(m[1]);
      }
    };
    proc.stdout.on('data', onData('stdout'));
    proc.stderr.on('data', onData('stderr'));
    proc.on('error', reject);
    proc.on('exit', (code, signal) => reject(new Error(`${cmd} exited (code ${code}, signal ${signal}) before listening:\n${sp.logText()}`)));
  });
  try {
    sp.url = await withTimeout(url, timeoutMs, `"listening http" line from ${cmd}`);
  } catch (err) {
    await sp.stop();
    throw err;
  }
  return sp;
}

async function startMock(timeoutMs) {
  // coturn as the TURN server of the mock (REST credentials), relaying on loopback.
  const turnPort = await freePort();
  const secret = crypto.randomBytes(16).toString('hex');
  const coturn = spawn('turnserver', [
    '-n', '--listening-ip', '127.0.0.1', '--relay-ip', '127.0.0.1', '-p', String(turnPort),
    '--use-auth-secret', '--static-auth-secret', secret, '--realm', 'switchboard', '--allow-loopback-peers',
    '--no-tls', '--no-dtls', '--no-cli', '--log-file', 'stdout', '--min-port', '49160', '--max-port', '49760', '--fingerprint',
  ], { stdio: 'ignore' });
  const sp = await spawnServer(process.execPath, [path.join(here, 'mock-server.mjs'), '--http', '127.0.0.1:0'], { TURN_SECRET: secret, TURN_PORT: String(turnPort) }, timeoutMs);
  sp.extra.push(coturn);
  return sp;
}

/** Per-test (or per-file) resources; `close()` releases all of them. */
export class Harness {
  constructor() {
    this.servers = [];
    this.browsers = [];
  }

  /** Starts `switchboard serve --http 127.0.0.1:0 --turn-port 0` and waits for its "listening http" line. */
  async startServer({ args = [], env = {}, timeoutMs = 20000 } = {}) {
    let sp;
    if (process.env.SWITCHBOARD_MOCK === '1') {
      sp = await startMock(timeoutMs);
    } else {
      const bin = serverBin();
      if (!fs.existsSync(bin)) throw new Error(`server binary not found: ${bin} (build it with cargo build -p switchboard, or set SWITCHBOARD_BIN)`);
      sp = await spawnServer(bin, ['serve', '--http', '127.0.0.1:0', '--turn-port', '0', '--sfu-port', '0', ...args], { RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1', ...env }, timeoutMs);
    }
    this.servers.push(sp);
    return sp;
  }

  async launchBrowser() {
    const browser = await withTimeout(
      chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: process.env.E2E_HEADFUL !== '1', args: CHROMIUM_ARGS }),
      30000,
      'chromium launch',
    );
    this.browsers.push(browser);
    return browser;
  }

  /**
   * Opens the app for one participant in its own browser context and waits until it joined the room.
   * Returns `{context, page, name, id}`.
   */
  async join(browser, server, room, name, { relay = false, simulcast = true, timeout = 20000, viewport = { width: 1280, height: 720 } } = {}) {
    const context = await browser.newContext({ viewport, permissions: ['camera', 'microphone'] });
    const page = await context.newPage();
    const consoleLines = [];
    page.on('console', (m) => {
      consoleLines.push(`[${m.type()}] ${m.text()}`);
      if (consoleLines.length > 500) consoleLines.splice(0, 250);
    });
    page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
    const q = new URLSearchParams({ name });
    if (relay) q.set('relay', '1');
    if (!simulcast) q.set('simulcast', '0');
    await page.goto(`${server.url}/room/${encodeURIComponent(room)}?${q}`, { timeout });
    try {
      await page.waitForFunction(() => window.switchboardApp?.room?.signalingState === 'connected' && !!window.switchboardApp.room.localParticipant, null, { timeout });
    } catch (err) {
      throw new Error(`${name} did not join ${room}: ${err.message}\nbrowser console:\n${consoleLines.join('\n')}\nserver log (tail):\n${server.log.slice(-30).join('\n')}`);
    }
    const id = await page.evaluate(() => window.switchboardApp.room.localParticipant.id);
    return { context, page, name, id, console: consoleLines };
  }

  async close() {
    for (const b of this.browsers.splice(0)) {
      await withTimeout(b.close(), 10000, 'browser close').catch(() => {
        try {
          const pid = b.process?.()?.pid;
          if (pid) process.kill(pid, 'SIGKILL');
        } catch (_) {
          /* gone */
        }
      });
    }
    for (const s of this.servers.splice(0)) await s.stop();
  }
}

// ---- reading the app's state (window.switchboardApp) ----

/** Per remote participant: {framesDecoded, totalSamplesReceived, path, local, remote, connectionState, rttMs}. */
export async function mediaCounters(page) {
  return page.evaluate(async () => {
    const stats = await window.switchboardApp.room.getStats();
    const out = {};
    for (const [id, s] of Object.entries(stats)) {
      out[id] = {
        framesDecoded: s.video.framesDecoded,
        totalSamplesReceived: s.audio.totalSamplesReceived,
        path: s.path,
        local: s.local?.type ?? null,
        remote: s.remote?.type ?? null,
        connectionState: s.connectionState,
        rttMs: s.rttMs,
      };
    }
    return out;
  });
}

/** Waits until `page` decodes video and plays audio from each of `peerIds`. */
export async function waitForMediaFrom(page, peerIds, { timeout = 30000, what = 'media' } = {}) {
  return until(async () => {
    const c = await mediaCounters(page);
    return peerIds.every((id) => c[id] && c[id].framesDecoded > 0 && c[id].totalSamplesReceived > 0) && c;
  }, { timeout, interval: 500, what });
}

/**
 * Asserts media from every peer keeps flowing: samples the counters, waits `ms`, samples again.
 * Returns {before, after, growing: {id: {frames, samples}}}.
 */
export async function mediaGrowth(page, peerIds, ms = 3000) {
  const before = await mediaCounters(page);
  await sleep(ms);
  const after = await mediaCounters(page);
  const growing = {};
  for (const id of peerIds) {
    growing[id] = {
      frames: (after[id]?.framesDecoded ?? 0) - (before[id]?.framesDecoded ?? 0),
      samples: (after[id]?.totalSamplesReceived ?? 0) - (before[id]?.totalSamplesReceived ?? 0),
    };
  }
  return { before, after, growing };
}

export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file });
  return file;
}

/** GET a path on the server; returns {status, body}. */
export async function httpGet(server, p, timeout = 5000) {
  const ctrl = new AbortController();
  const t = setTimeout(() => ctrl.abort(), timeout);
  try {
    const res = await fetch(server.url + p, { signal: ctrl.signal });
    return { status: res.status, body: await res.text() };
  } finally {
    clearTimeout(t);
  }
}

/** Waits until the reliable data channel to each of `peerIds` is open on `page`. */
export async function waitForChannels(page, peerIds, timeout = 20000) {
  await page.waitForFunction(
    (ids) => ids.every((id) => window.switchboardApp.room.peers.get(id)?.channels?.data?.readyState === 'open'
      && window.switchboardApp.room.peers.get(id)?.channels?.file?.readyState === 'open'),
    peerIds,
    { timeout },
  );
}

/** Events the app logged (participant_joined/left, signaling_state, connection_state, error). */
export function appEvents(page) {
  return page.evaluate(() => window.switchboardApp.events);
}
