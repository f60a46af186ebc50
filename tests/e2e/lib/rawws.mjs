// A raw signaling client (the `ws` package) for protocol-level tests: queue of received JSON messages,
// `next(predicate, timeout)` to await one, `closed` promise.
import WebSocket from 'ws';

export class RawClient {
  static async open(url, timeout = 5000) {
    const c = new RawClient(url);
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`ws open timed out: ${url}`)), timeout);
      c.ws.once('open', () => { clearTimeout(t); resolve(); });
      c.ws.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    return c;
  }
  constructor(url) {
    this.ws = new WebSocket(url);
    this.messages = [];
    this.waiters = [];
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data, isBinary) => {
      let msg;
      try {
        msg = JSON.parse(data.toString());
      } catch (_) {
        msg = { type: '__not_json__', raw: data.toString(), binary: isBinary };
      }
      this.messages.push(msg);
      for (const w of [...this.waiters]) {
        if (w.pred(msg)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(msg);
        }
      }
    });
  }
  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }
  /** Next message matching `pred` (including ones already received and not yet consumed). */
  next(pred = () => true, timeout = 5000, what = 'message') {
    const i = this.messages.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.messages.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}; got: ${JSON.stringify(this.messages).slice(0, 500)}; close: ${JSON.stringify(this.closeInfo)}`));
      }, timeout);
      this.waiters.push(w);
    }).then((m) => {
      const j = this.messages.indexOf(m);
      if (j >= 0) this.messages.splice(j, 1);
      return m;
    });
  }
  isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }
  close() {
    try {
      this.ws.terminate();
    } catch (_) {
      /* ignore */
    }
  }
}
