// Helpers of the native-client tests: child processes with their output collected line by line.
import { spawn } from 'node:child_process';
import { serverBin } from '../e2e/lib/harness.mjs';

const children = [];

/** Starts `cmd args` and collects its stdout/stderr lines; `proc.exited` is set on exit. */
export function startProc(cmd, args, { env = {} } = {}) {
  const proc = spawn(cmd, args, {
    env: { ...process.env, NO_COLOR: '1', RUST_BACKTRACE: '0', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.push(proc);
  const p = { proc, stdout: [], stderr: [], exited: null };
  for (const [name, stream] of [['stdout', proc.stdout], ['stderr', proc.stderr]]) {
    let buf = '';
    stream.on('data', (chunk) => {
      buf += chunk.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        p[name].push(buf.slice(0, i).replace(/\r$/, ''));
        buf = buf.slice(i + 1);
      }
    });
  }
  proc.on('exit', (code, signal) => {
    p.exited = { code, signal };
  });
  p.log = (title = cmd) => `--- ${title} stdout\n${p.stdout.join('\n')}\n--- ${title} stderr\n${p.stderr.join('\n')}`;
  p.wait = () => new Promise((resolve) => (p.exited ? resolve(p.exited) : proc.on('exit', (code, signal) => resolve({ code, signal }))));
  return p;
}

/** `switchboard join ...` */
export function startCli(args, env = {}) {
  return startProc(serverBin(), ['join', ...args], { env: { RUST_LOG: process.env.RUST_LOG || 'warn', ...env } });
}

/** Kills every child still running (call from `after`). */
export function killAll() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch (_) {
        /* gone */
      }
    }
  }
}
