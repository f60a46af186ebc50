// Switchboard browser SDK (protocol version 1).
//
// Plain ES module, no build step, no dependency. Served by `switchboard serve` at `/sdk/switchboard.js`.
// Types and documentation: `switchboard.d.ts` next to this file; the wire protocol: `docs/protocol.md`.
//
//   import { connect } from '/sdk/switchboard.js';
//   const room = await connect('/ws', token);
//   room.on('track', (participant, track, stream) => { ... });
//   await room.publish({ camera: true, microphone: true });
//
// Mesh rooms: one RTCPeerConnection per remote participant, W3C "perfect negotiation" (the peer whose id sorts
// lower is impolite), trickle ICE through the signaling server. Once a peer connection is up, media and data
// flow without the signaling server: losing the WebSocket never closes a peer connection.

export const PROTOCOL_VERSION = 1;

/** Data-channel ids (negotiated out of band, identical on both sides). */
const CHANNELS = {
  data: { id: 0, label: 'data', init: { ordered: true } },
  lossy: { id: 1, label: 'lossy', init: { ordered: false, maxRetransmits: 0 } },
  file: { id: 2, label: 'file', init: { ordered: true } },
};

/** Adds one `inbound-rtp` stats entry to a per-peer summary ({video: {...}, audio: {...}}). */
function addInbound(out, s) {
  const k = s.kind || s.mediaType;
  if (k === 'video') {
    out.video.framesDecoded += s.framesDecoded || 0;
    out.video.framesReceived += s.framesReceived || 0;
    out.video.packetsReceived += s.packetsReceived || 0;
    out.video.packetsLost += s.packetsLost || 0;
    out.video.frameWidth = Math.max(out.video.frameWidth, s.frameWidth || 0);
    out.video.frameHeight = Math.max(out.video.frameHeight, s.frameHeight || 0);
  } else if (k === 'audio') {
    out.audio.totalSamplesReceived += s.totalSamplesReceived || 0;
    out.audio.packetsReceived += s.packetsReceived || 0;
    out.audio.packetsLost += s.packetsLost || 0;
  }
}

/** Socket-closing error codes: reconnecting with the same credentials would fail the same way. */
const FATAL_CODES = new Set(['unauthorized', 'forbidden', 'room_full', 'unsupported_protocol', 'replaced']);

const FILE_CHUNK = 16 * 1024;
const FILE_HIGH_WATER = 1024 * 1024;
const FILE_LOW_WATER = 256 * 1024;
/** SFU rooms: the simulcast layers published (rid q/h/f: quarter, half and full resolution). */
const SIMULCAST_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

/**
 * The simulcast layers for a video track of this size, or null for none. Chromium sends at most 3 layers from
 * 960x540 up, 2 from 640x360 and 1 below (it disables the extra, top ones): ask for what it will send, so the
 * full-resolution layer is never the one dropped.
 */
function simulcastLayersFor(track) {
  const { width = 0, height = 0 } = track.getSettings ? track.getSettings() : {};
  const small = Math.min(width, height) || height;
  const n = small >= 540 ? 3 : small >= 360 ? 2 : 1;
  return n > 1 ? SIMULCAST_LAYERS.slice(3 - n).map((l) => ({ ...l })) : null;
}
/**
 * Puts `codec` ('vp8', 'h264', 'vp9', 'av1') first in the transceiver's codec preferences when the browser has
 * it (H.264: packetization-mode=1 and constrained baseline first, what every decoder takes); otherwise leaves the
 * browser's order.
 */
function preferVideoCodec(transceiver, codec) {
  if (!codec || !transceiver?.setCodecPreferences) return;
  const want = `video/${codec}`.toLowerCase();
  const rank = (c) => (/packetization-mode=1/.test(c.sdpFmtpLine || '') ? 0 : 2) + (/profile-level-id=42e0/.test(c.sdpFmtpLine || '') ? 0 : 1);
  for (const caps of [RTCRtpSender.getCapabilities?.('video'), RTCRtpReceiver.getCapabilities?.('video')]) {
    const codecs = caps?.codecs || [];
    const first = codecs.filter((c) => c.mimeType.toLowerCase() === want).sort((a, b) => rank(a) - rank(b));
    if (!first.length) continue;
    try {
      transceiver.setCodecPreferences([...first, ...codecs.filter((c) => c.mimeType.toLowerCase() !== want)]);
      return;
    } catch (err) {
      console.debug('switchboard: codec preference refused', err.message);
    }
  }
}
/** SFU rooms: bytes a file sender may be ahead of its slowest receiver's `got` report. */
const FILE_WINDOW = 4 * 1024 * 1024;
/** SFU rooms: a file receiver reports its progress to the sender every this many bytes. */
const FILE_GOT_EVERY = 512 * 1024;
const PING_INTERVAL_MS = 15000;
const OFFER_WATCHDOG_MS = 8000;
const DISCONNECTED_RESTART_MS = 3000;

/**
 * Watches `pc`, the connection of `link` (a mesh peer or the SFU link, each with `restartIce()`, `closed`,
 * `pendingRestart` and `disconnectTimer`): every state goes to `report(state)`; a failed connection restarts ICE at
 * once, a disconnected one if it is still disconnected after DISCONNECTED_RESTART_MS.
 */
function watchConnection(link, pc, report) {
  pc.onconnectionstatechange = () => {
    const state = pc.connectionState;
    report(state);
    clearTimeout(link.disconnectTimer);
    if (state === 'failed') {
      link.restartIce();
    } else if (state === 'disconnected') {
      link.disconnectTimer = setTimeout(() => {
        if (!link.closed && pc.connectionState === 'disconnected') link.restartIce();
      }, DISCONNECTED_RESTART_MS);
    } else if (state === 'connected') {
      link.pendingRestart = false;
    }
  };
}

function wsUrlFrom(url) {
  const base = typeof location !== 'undefined' ? location.href : 'http://127.0.0.1/';
  const u = new URL(url || '/ws', base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
  return u.toString();
}

function toHex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** SHA-256 of a Blob / ArrayBuffer as lowercase hex (crypto.subtle; needs a secure context or localhost). */
export async function sha256Hex(data) {
  const buf = data instanceof Blob ? await data.arrayBuffer() : data;
  return toHex(await crypto.subtle.digest('SHA-256', buf));
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/**
 * SFU rooms: data-channel messages carry a routing header, `<address>\n<payload>` (docs/protocol.md). Outgoing the
 * address is the recipient ('' = everyone, 'sfu' = the SFU itself), incoming it is the sender.
 */
function frameData(to, data) {
  if (typeof data === 'string') return `${to}\n${data}`;
  const head = utf8.encode(`${to}\n`);
  if (data instanceof Blob) return new Blob([head, data]);
  const body = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/** Splits a relayed message into [sender id, payload]; null without a header. */
function unframeData(data) {
  if (typeof data === 'string') {
    const i = data.indexOf('\n');
    return i < 0 || i > 64 ? null : [data.slice(0, i), data.slice(i + 1)];
  }
  const u = new Uint8Array(data);
  const n = Math.min(u.length, 65);
  for (let i = 0; i < n; i++) {
    if (u[i] === 10) return [utf8Decoder.decode(u.subarray(0, i)), data.slice(i + 1)];
  }
  return null;
}

function randomId() {
  const a = new Uint8Array(8);
  crypto.getRandomValues(a);
  return toHex(a.buffer);
}

/** Minimal event emitter: `on(event, fn)`, `off(event, fn)`, `once(event, fn)`. */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    const set = this._handlers.get(event);
    if (set) {
      if (fn) set.delete(fn);
      else set.clear();
    }
    return this;
  }
  once(event, fn) {
    const wrap = (...args) => {
      this.off(event, wrap);
      fn(...args);
    };
    return this.on(event, wrap);
  }
  emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`switchboard: handler for "${event}" threw`, err);
      }
    }
  }
}

/** A participant of the room (remote, or `room.localParticipant`). */
/**
 * The selected candidate pair of a peer connection's stats report (the transport's, else a nominated succeeded
 * pair) and its two candidates: `{pair, local, remote, path}` with path 'direct' | 'relay' | null.
 */
function selectedPath(report) {
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) pair = pair || s;
    });
  }
  const cand = (id) => {
    const c = id && byId.get(id);
    return c ? { type: c.candidateType, protocol: c.protocol, address: c.address ?? c.ip, port: c.port, relayProtocol: c.relayProtocol } : null;
  };
  const local = pair ? cand(pair.localCandidateId) : null;
  const remote = pair ? cand(pair.remoteCandidateId) : null;
  const path = local && remote ? (local.type === 'relay' || remote.type === 'relay' ? 'relay' : 'direct') : null;
  return { pair, local, remote, path };
}

/** A participant's stats summary (`room.getStats()`) with its counters at zero, for the path `sel` of `pc`. */
function emptyPeerStats(participant, pc, sel) {
  return {
    participantId: participant.id,
    name: participant.name,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    local: sel.local,
    remote: sel.remote,
    path: sel.path,
    rttMs: sel.pair && sel.pair.currentRoundTripTime != null ? sel.pair.currentRoundTripTime * 1000 : null,
    bytesSent: 0,
    bytesReceived: 0,
    inboundBitrate: 0,
    outboundBitrate: 0,
    video: { framesDecoded: 0, framesReceived: 0, packetsReceived: 0, packetsLost: 0, frameWidth: 0, frameHeight: 0 },
    audio: { totalSamplesReceived: 0, packetsReceived: 0, packetsLost: 0 },
    packetLoss: 0,
    dataChannels: {},
    timestamp: Date.now(),
  };
}

export class Participant {
  constructor(info, isLocal = false) {
    this.id = info.id;
    this.identity = info.identity;
    this.name = info.name || info.identity;
    this.metadata = info.metadata || {};
    this.isLocal = isLocal;
    /** @type {Map<string, MediaStream>} remote streams by id */
    this.streams = new Map();
    /** @type {Set<MediaStreamTrack>} */
    this.tracks = new Set();
  }
  _update(info) {
    if (info.identity) this.identity = info.identity;
    if (info.name) this.name = info.name;
    if (info.metadata && typeof info.metadata === 'object') this.metadata = info.metadata;
  }
  get audioMuted() {
    return !!this.metadata.muted_audio;
  }
  get videoMuted() {
    return !!this.metadata.muted_video;
  }
  /** What a remote stream carries, from the publisher's metadata: 'camera', 'screen' or undefined. */
  streamKind(streamId) {
    const s = this.metadata.streams;
    return s && typeof s === 'object' ? s[streamId] : undefined;
  }
}

/** One mesh link: the RTCPeerConnection to one remote participant and its data channels. */
class Peer {
  constructor(room, participant) {
    this.room = room;
    this.participant = participant;
    this.id = participant.id;
    // Role rule (protocol.md): the peer whose id sorts lower is impolite.
    this.polite = room.localParticipant.id > participant.id;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.channels = {};
    this.senders = new Map(); // MediaStreamTrack -> RTCRtpSender
    this.tracksAttached = false;
    this.pendingNegotiation = false;
    this.queue = Promise.resolve();
    this.disconnectTimer = null;
    this.offerWatchdog = null;
    this.closed = false;
    this.prevStats = null;
    this.outbox = []; // messages queued until the data channel opens
    this.fileRx = null;
    this.fileTxQueue = Promise.resolve();
    this.fileAcks = new Map();

    const pc = new RTCPeerConnection({
      iceServers: room.iceServers,
      iceTransportPolicy: room.options.iceTransportPolicy || 'all',
      bundlePolicy: 'max-bundle',
    });
    this.pc = pc;

    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return; // end-of-candidates is implicit; the peer does not need it
      this.room._send({
        type: 'candidate',
        to: this.id,
        candidate: {
          candidate: candidate.candidate,
          sdp_mid: candidate.sdpMid,
          sdp_mline_index: candidate.sdpMLineIndex,
          username_fragment: candidate.usernameFragment,
        },
      });
    };

    pc.onnegotiationneeded = () => this._negotiate();

    pc.ontrack = ({ track, streams }) => {
      const stream = streams[0] || new MediaStream([track]);
      const p = this.participant;
      p.streams.set(stream.id, stream);
      p.tracks.add(track);
      if (!stream._sbWatched) {
        stream._sbWatched = true;
        stream.addEventListener('removetrack', (ev) => {
          p.tracks.delete(ev.track);
          if (stream.getTracks().length === 0) p.streams.delete(stream.id);
          this.room.emit('track_removed', p, ev.track, stream);
        });
      }
      this.room.emit('track', p, track, stream);
    };

    watchConnection(this, pc, (state) => this.room.emit('connection_state', this.participant, state));
    pc.onsignalingstatechange = () => {
      if (pc.signalingState === 'stable') clearTimeout(this.offerWatchdog);
    };
  }

  /** Adds our published tracks and the negotiated data channels (once). */
  attachLocal() {
    if (!this.tracksAttached) {
      this.tracksAttached = true;
      for (const { track, stream } of this.room._localTracks()) this.addTrack(track, stream);
    }
    for (const [key, spec] of Object.entries(CHANNELS)) {
      if (this.channels[key]) continue;
      const dc = this.pc.createDataChannel(spec.label, { ...spec.init, negotiated: true, id: spec.id });
      dc.binaryType = 'arraybuffer';
      this.channels[key] = dc;
      this._wireChannel(key, dc);
    }
  }

  _wireChannel(key, dc) {
    dc.onopen = () => {
      this.room.emit('channel_open', this.participant, dc.label);
      if (key === 'data') this._flushOutbox();
    };
    dc.onmessage = (ev) => {
      if (key === 'file') this._onFileMessage(ev.data);
      else this.room.emit('data', this.participant, ev.data, dc.label);
    };
  }

  /** Sends what was queued while the data channel was not open yet. */
  _flushOutbox() {
    const out = this.outbox;
    this.outbox = [];
    for (const m of out) this._sendOn(m.key, m.data);
  }

  addTrack(track, stream) {
    if (this.senders.has(track) || this.closed) return;
    const sender = this.pc.addTrack(track, stream);
    this.senders.set(track, sender);
    if (track.kind === 'video') preferVideoCodec(this.pc.getTransceivers().find((t) => t.sender === sender), this.room.options.videoCodec);
  }

  removeTrack(track) {
    const sender = this.senders.get(track);
    if (!sender) return;
    this.senders.delete(track);
    try {
      this.pc.removeTrack(sender);
    } catch (_) {
      /* already closed */
    }
  }

  async _negotiate({ iceRestart = false } = {}) {
    if (this.closed) return;
    if (!this.room._signalingOpen()) {
      this.pendingNegotiation = true;
      if (iceRestart) this.pendingRestart = true;
      return;
    }
    try {
      this.makingOffer = true;
      if (iceRestart) {
        const offer = await this.pc.createOffer({ iceRestart: true });
        if (this.pc.signalingState !== 'stable') return; // an incoming offer won; it will be answered instead
        await this.pc.setLocalDescription(offer);
      } else {
        await this.pc.setLocalDescription();
      }
      if (this.pc.localDescription.type !== 'offer') return;
      this.pendingNegotiation = false;
      this.room._send({ type: 'offer', to: this.id, sdp: this.pc.localDescription.sdp });
      this._armWatchdog();
    } catch (err) {
      this.room._emitError('negotiation_failed', `offer to ${this.id} failed: ${err.message || err}`);
    } finally {
      this.makingOffer = false;
    }
  }

  // An offer whose answer never comes (lost while the signaling socket was down, or ignored in a collision):
  // roll back and offer again with an ICE restart.
  _armWatchdog() {
    clearTimeout(this.offerWatchdog);
    this.offerWatchdog = setTimeout(async () => {
      if (this.closed || this.pc.signalingState !== 'have-local-offer') return;
      if (!this.room._signalingOpen()) {
        this.pendingNegotiation = true;
        return;
      }
      try {
        await this.pc.setLocalDescription({ type: 'rollback' });
      } catch (_) {
        /* ignore */
      }
      this._negotiate({ iceRestart: true });
    }, OFFER_WATCHDOG_MS);
  }

  restartIce() {
    if (this.closed) return;
    if (!this.room._signalingOpen()) {
      this.pendingRestart = true;
      return;
    }
    this.pendingRestart = false;
    if (this.pc.signalingState === 'stable') this._negotiate({ iceRestart: true });
    else this.pc.restartIce(); // applied to the next offer
  }

  /** Called after the signaling socket came back (resumed session). */
  async afterResume() {
    if (this.closed) return;
    const pc = this.pc;
    if (pc.signalingState === 'have-local-offer') {
      // Its answer may have been lost during the gap: start over.
      try {
        await pc.setLocalDescription({ type: 'rollback' });
      } catch (_) {
        /* ignore */
      }
      this._negotiate({ iceRestart: pc.connectionState !== 'connected' || this.pendingRestart });
    } else if (this.pendingRestart || pc.connectionState === 'failed' || pc.connectionState === 'disconnected') {
      this.restartIce();
    } else if (this.pendingNegotiation) {
      this._negotiate();
    }
  }

  /** Serializes handling of signaling messages from this peer. */
  enqueue(fn) {
    this.queue = this.queue.then(fn).catch((err) => {
      this.room._emitError('negotiation_failed', `peer ${this.id}: ${err.message || err}`);
    });
    return this.queue;
  }

  async onDescription(type, sdp) {
    if (this.closed) return;
    const pc = this.pc;
    const offerCollision = type === 'offer' && (this.makingOffer || pc.signalingState !== 'stable');
    this.ignoreOffer = !this.polite && offerCollision;
    if (this.ignoreOffer) {
      // Our pending offer may have been lost (sent while the other side's signaling socket was down, e.g. after a
      // network change): send it again, so the polite peer rolls its own offer back and answers ours now instead
      // of both sides waiting for the watchdog.
      if (!this.makingOffer && pc.signalingState === 'have-local-offer' && pc.localDescription) {
        // localDescription carries the candidates gathered since (some may have been trickled into the outage
        // too); the SFU recognizes the repeat with them.
        this.room._send({ type: 'offer', to: this.id, sdp: pc.localDescription.sdp });
      }
      return;
    }
    if (type === 'answer' && pc.signalingState !== 'have-local-offer') return; // stale answer
    await pc.setRemoteDescription({ type, sdp }); // the polite peer rolls back implicitly
    if (type === 'offer') {
      this.attachLocal(); // reuses the offered transceivers: one round trip for a full call
      await pc.setLocalDescription();
      this.room._send({ type: 'answer', to: this.id, sdp: pc.localDescription.sdp });
    }
  }

  async onCandidate(c) {
    if (this.closed || !c) return;
    try {
      await this.pc.addIceCandidate({
        candidate: c.candidate,
        sdpMid: c.sdp_mid ?? null,
        sdpMLineIndex: c.sdp_mline_index ?? null,
        usernameFragment: c.username_fragment ?? undefined,
      });
    } catch (err) {
      if (!this.ignoreOffer) {
        // Candidates of a superseded ICE generation are harmless; report others.
        if (this.pc.remoteDescription) console.debug('switchboard: candidate rejected', err.message);
      }
    }
  }

  _sendOn(key, data) {
    const dc = this.channels[key];
    if (!dc || dc.readyState !== 'open') {
      if (key !== 'lossy' && this.outbox.length < 1000) this.outbox.push({ key, data });
      return false;
    }
    dc.send(data);
    return true;
  }

  // ---- file transfer (channel "file"): JSON control strings + binary chunks, one file at a time ----

  sendFile(file, transferId, onProgress) {
    const run = async () => {
      const dc = this.channels.file;
      if (!dc) throw new Error(`no file channel to ${this.id}`);
      if (dc.readyState !== 'open') {
        await new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('file channel did not open')), 15000);
          dc.addEventListener('open', () => { clearTimeout(t); resolve(); }, { once: true });
        });
      }
      dc.bufferedAmountLowThreshold = FILE_LOW_WATER;
      const sha256 = await sha256Hex(file);
      const ack = new Promise((resolve, reject) => {
        this.fileAcks.set(transferId, { resolve, reject });
        dc.addEventListener('close', () => reject(new Error('file channel closed')), { once: true });
      });
      dc.send(JSON.stringify({ t: 'start', id: transferId, name: file.name || 'file', size: file.size, mime: file.type || 'application/octet-stream', sha256 }));
      let sent = 0;
      while (sent < file.size) {
        if (dc.readyState !== 'open') throw new Error('file channel closed');
        if (dc.bufferedAmount > FILE_HIGH_WATER) {
          await new Promise((resolve) => {
            const done = () => { dc.removeEventListener('bufferedamountlow', done); dc.removeEventListener('close', done); resolve(); };
            dc.addEventListener('bufferedamountlow', done);
            dc.addEventListener('close', done);
          });
          continue;
        }
        // Read a batch of chunks at once (fewer Blob reads), then send them chunk by chunk.
        const end = Math.min(file.size, sent + FILE_CHUNK * 16);
        const buf = await file.slice(sent, end).arrayBuffer();
        for (let off = 0; off < buf.byteLength; off += FILE_CHUNK) {
          dc.send(buf.slice(off, Math.min(buf.byteLength, off + FILE_CHUNK)));
        }
        sent = end;
        onProgress(sent);
      }
      dc.send(JSON.stringify({ t: 'end', id: transferId }));
      return ack;
    };
    const p = this.fileTxQueue.then(run, run);
    this.fileTxQueue = p.catch(() => {});
    return p;
  }

  async _onFileMessage(data) {
    const room = this.room;
    if (typeof data === 'string') {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (msg.t === 'start') {
        this.fileRx = { id: msg.id, name: msg.name, size: msg.size, mime: msg.mime, sha256: msg.sha256, chunks: [], received: 0 };
        room.emit('file_progress', { id: msg.id, direction: 'receive', participant: this.participant, name: msg.name, bytes: 0, size: msg.size });
      } else if (msg.t === 'end') {
        const rx = this.fileRx;
        this.fileRx = null;
        if (!rx || rx.id !== msg.id) return;
        const blob = new Blob(rx.chunks, { type: rx.mime });
        rx.chunks = null;
        const actual = await sha256Hex(blob);
        const ok = actual === rx.sha256 && blob.size === rx.size;
        this.channels.file?.readyState === 'open' && this.channels.file.send(JSON.stringify({ t: 'ack', id: rx.id, ok, sha256: actual }));
        room.emit('file', this.participant, { id: rx.id, name: rx.name, size: blob.size, mime: rx.mime, blob, sha256: actual, expectedSha256: rx.sha256, checksumOk: ok });
      } else if (msg.t === 'ack') {
        const waiter = this.fileAcks.get(msg.id);
        if (waiter) {
          this.fileAcks.delete(msg.id);
          waiter.resolve({ participantId: this.id, ok: !!msg.ok, sha256: msg.sha256 });
        }
      }
      return;
    }
    const rx = this.fileRx;
    if (!rx) return;
    rx.chunks.push(data);
    const before = rx.received;
    rx.received += data.byteLength;
    // Progress about every 256 KiB and at the end.
    if (Math.floor(before / 262144) !== Math.floor(rx.received / 262144) || rx.received >= rx.size) {
      room.emit('file_progress', { id: rx.id, direction: 'receive', participant: this.participant, name: rx.name, bytes: rx.received, size: rx.size });
    }
  }

  // ---- stats ----

  async stats() {
    const report = await this.pc.getStats();
    const now = performance.now();
    const sel = selectedPath(report);
    const { pair } = sel;
    const out = emptyPeerStats(this.participant, this.pc, sel);
    let inBytes = 0;
    let outBytes = 0;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        inBytes += s.bytesReceived || 0;
        addInbound(out, s);
      } else if (s.type === 'outbound-rtp') {
        outBytes += s.bytesSent || 0;
      } else if (s.type === 'data-channel') {
        out.dataChannels[s.label] = { state: s.state, messagesSent: s.messagesSent, messagesReceived: s.messagesReceived, bytesSent: s.bytesSent, bytesReceived: s.bytesReceived };
      }
    });
    if (pair) {
      out.bytesSent = pair.bytesSent || 0;
      out.bytesReceived = pair.bytesReceived || 0;
    }
    const rx = Math.max(inBytes, out.bytesReceived);
    const tx = Math.max(outBytes, out.bytesSent);
    if (this.prevStats && now > this.prevStats.t) {
      const dt = (now - this.prevStats.t) / 1000;
      out.inboundBitrate = Math.max(0, ((rx - this.prevStats.rx) * 8) / dt);
      out.outboundBitrate = Math.max(0, ((tx - this.prevStats.tx) * 8) / dt);
    }
    this.prevStats = { t: now, rx, tx };
    const recv = out.video.packetsReceived + out.audio.packetsReceived;
    const lost = out.video.packetsLost + out.audio.packetsLost;
    out.packetLoss = recv + lost > 0 ? lost / (recv + lost) : 0;
    return out;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.offerWatchdog);
    for (const w of this.fileAcks.values()) w.reject(new Error('peer closed'));
    this.fileAcks.clear();
    try {
      this.pc.close();
    } catch (_) {
      /* ignore */
    }
  }
}


/**
 * SFU rooms (`joined.room.mode === 'sfu'`): the one RTCPeerConnection to the server ("sfu"). Local tracks are
 * sent on sendonly transceivers; the server adds a sendonly m-line per forwarded track, whose
 * `a=msid:<stream id> <participant id>.<n>` names the publisher. Negotiation is the mesh's perfect negotiation
 * with the server as the polite peer ("sfu" sorts after every "p_..." id).
 */
class SfuPeer extends Peer {
  constructor(room) {
    super(room, { id: 'sfu', identity: 'sfu', name: 'SFU', metadata: {}, streams: new Map(), tracks: new Set() });
    this.midOwner = new Map(); // mid -> participant id
    this.trackOwner = new Map(); // remote track id -> participant id
    this.prevByParticipant = new Map();
    this.fileTx = new Map(); // transfer id -> {got: Map<participant id, bytes>, waiters, wake}
    this.fileRxBy = new Map(); // sender id -> file being received
    this.qualityBy = new Map(); // participant id -> wanted video quality
    this.qualityAll = null;
    const pc = this.pc;
    pc.ontrack = (ev) => this._onTrack(ev);
    watchConnection(this, pc, (state) => {
      for (const p of this.room.participants.values()) this.room.emit('connection_state', p, state);
    });
  }

  /**
   * The three negotiated data channels with the SFU (which relays them; `attachLocal` of Peer creates them and
   * publishes our tracks): opening tells every participant reached through the SFU, messages carry a routing
   * header.
   */
  _wireChannel(key, dc) {
    dc.onopen = () => {
      for (const p of this.room.participants.values()) if (!p._viaSfu) this.room.emit('channel_open', p, dc.label);
      if (key === 'data') this._flushOutbox();
    };
    dc.onmessage = (ev) => this._onRelayed(key, ev.data);
  }

  /** Sends `data` on channel `key` to participant `to` ('' = everyone). False when queued (channel not open). */
  sendData(key, to, data) {
    return this._sendOn(key, frameData(to, data));
  }

  _onRelayed(key, data) {
    const r = unframeData(data);
    if (!r) return;
    const p = this.room.participants.get(r[0]);
    if (!p) return;
    if (key === 'file') this._onRelayedFile(p, r[1]);
    else this.room.emit('data', p, r[1], CHANNELS[key].label);
  }

  // ---- file transfer through the SFU: the sender uploads once (addressed to everyone or to one participant),
  // every receiver reports `got` progress to the sender (flow control: the sender stays at most FILE_WINDOW
  // ahead of its slowest receiver, so the SFU never holds much) and `ack`s the checksum at the end.

  sendFileTo(file, transferId, targets, to, onProgress) {
    const run = async () => {
      const dc = this.channels.file;
      if (!dc) throw new Error('no file channel to the SFU');
      if (dc.readyState !== 'open') {
        await new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('file channel did not open')), 15000);
          dc.addEventListener('open', () => { clearTimeout(t); resolve(); }, { once: true });
        });
      }
      dc.bufferedAmountLowThreshold = FILE_LOW_WATER;
      const sha256 = await sha256Hex(file);
      const tx = { got: new Map(targets.map((id) => [id, 0])), waiters: new Map(), wake: null };
      const acks = targets.map((id) => new Promise((resolve) => tx.waiters.set(id, resolve)));
      this.fileTx.set(transferId, tx);
      const wait = () => new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          dc.removeEventListener('bufferedamountlow', done);
          dc.removeEventListener('close', done);
          tx.wake = null;
          resolve();
        };
        const timer = setTimeout(done, 1000);
        tx.wake = done;
        dc.addEventListener('bufferedamountlow', done);
        dc.addEventListener('close', done);
      });
      try {
        const send = (d) => dc.send(frameData(to, d));
        send(JSON.stringify({ t: 'start', id: transferId, name: file.name || 'file', size: file.size, mime: file.type || 'application/octet-stream', sha256 }));
        let sent = 0;
        while (sent < file.size) {
          if (dc.readyState !== 'open') throw new Error('file channel closed');
          if (tx.waiters.size === 0) break; // every receiver left
          let slowest = sent;
          for (const v of tx.got.values()) slowest = Math.min(slowest, v);
          if (dc.bufferedAmount > FILE_HIGH_WATER || sent - slowest > FILE_WINDOW) {
            await wait();
            continue;
          }
          const end = Math.min(file.size, sent + FILE_CHUNK * 16);
          const buf = await file.slice(sent, end).arrayBuffer();
          for (let off = 0; off < buf.byteLength; off += FILE_CHUNK) send(new Uint8Array(buf, off, Math.min(FILE_CHUNK, buf.byteLength - off)));
          sent = end;
          onProgress(sent);
        }
        send(JSON.stringify({ t: 'end', id: transferId }));
        return await Promise.all(acks);
      } finally {
        this.fileTx.delete(transferId);
      }
    };
    const p = this.fileTxQueue.then(run, run);
    this.fileTxQueue = p.catch(() => {});
    return p;
  }

  async _onRelayedFile(p, data) {
    const room = this.room;
    if (typeof data === 'string') {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (msg.t === 'start') {
        this.fileRxBy.set(p.id, { id: msg.id, name: msg.name, size: msg.size, mime: msg.mime, sha256: msg.sha256, chunks: [], received: 0, reported: 0 });
        room.emit('file_progress', { id: msg.id, direction: 'receive', participant: p, name: msg.name, bytes: 0, size: msg.size });
      } else if (msg.t === 'end') {
        const rx = this.fileRxBy.get(p.id);
        this.fileRxBy.delete(p.id);
        if (!rx || rx.id !== msg.id) return;
        const blob = new Blob(rx.chunks, { type: rx.mime });
        rx.chunks = null;
        const actual = await sha256Hex(blob);
        const ok = actual === rx.sha256 && blob.size === rx.size;
        this.sendData('file', p.id, JSON.stringify({ t: 'ack', id: rx.id, ok, sha256: actual }));
        room.emit('file', p, { id: rx.id, name: rx.name, size: blob.size, mime: rx.mime, blob, sha256: actual, expectedSha256: rx.sha256, checksumOk: ok });
      } else if (msg.t === 'got' || msg.t === 'ack') {
        const tx = this.fileTx.get(msg.id);
        if (!tx || !tx.got.has(p.id)) return;
        if (msg.t === 'got') {
          tx.got.set(p.id, Number(msg.bytes) || 0);
        } else {
          tx.got.delete(p.id);
          const w = tx.waiters.get(p.id);
          tx.waiters.delete(p.id);
          w?.({ participantId: p.id, ok: !!msg.ok, sha256: msg.sha256 });
        }
        tx.wake?.();
      }
      return;
    }
    const rx = this.fileRxBy.get(p.id);
    if (!rx) return;
    rx.chunks.push(data);
    const before = rx.received;
    rx.received += data.byteLength;
    if (rx.received - rx.reported >= FILE_GOT_EVERY) {
      rx.reported = rx.received;
      this.sendData('file', p.id, JSON.stringify({ t: 'got', id: rx.id, bytes: rx.received }));
    }
    if (Math.floor(before / 262144) !== Math.floor(rx.received / 262144) || rx.received >= rx.size) {
      room.emit('file_progress', { id: rx.id, direction: 'receive', participant: p, name: rx.name, bytes: rx.received, size: rx.size });
    }
  }

  /** A participant left: its file transfers end (as failed for the ones it was receiving). */
  participantGone(id) {
    this.fileRxBy.delete(id);
    for (const tx of this.fileTx.values()) {
      tx.got.delete(id);
      const w = tx.waiters.get(id);
      tx.waiters.delete(id);
      w?.({ participantId: id, ok: false, sha256: null });
      tx.wake?.();
    }
  }

  addTrack(track, stream) {
    if (this.senders.has(track) || this.closed) return;
    const init = { direction: 'sendonly', streams: [stream] };
    // Simulcast: up to three layers (by the track's size), in the preferred codec (options.videoCodec, e.g. VP8
    // or H.264); the SFU forwards one per subscriber (see setSubscribeQuality).
    const layers = track.kind === 'video' && this.room.options.simulcast !== false ? simulcastLayersFor(track) : null;
    // VP9 and AV1: without a scalability mode per layer Chromium sends only the first layer, with spatial layers
    // inside it (SVC); with one it sends real simulcast, which the SFU switches like VP8's.
    const svcCodec = /^(vp9|av1)$/i.test(this.room.options.videoCodec || '');
    if (layers) init.sendEncodings = svcCodec ? layers.map((l) => ({ ...l, scalabilityMode: 'L1T1' })) : layers;
    const tr = this.pc.addTransceiver(track, init);
    if (track.kind === 'video') preferVideoCodec(tr, this.room.options.videoCodec);
    this.senders.set(track, tr.sender);
  }

  /** Asks the SFU to forward (or not) one participant's video and/or audio (`{video, audio}` booleans). */
  setSubscription(participantId, { video, audio } = {}) {
    const msg = { type: 'subscribe', participant: participantId };
    if (typeof video === 'boolean') msg.video = video;
    if (typeof audio === 'boolean') msg.audio = audio;
    return this.sendData('data', 'sfu', JSON.stringify(msg));
  }

  /** Asks the SFU for a video quality ('low' | 'medium' | 'high') from one participant, or from everyone. */
  setQuality(quality, participantId) {
    const msg = { type: 'subscribe_quality', quality };
    if (participantId) msg.participant = participantId;
    if (participantId) this.qualityBy.set(participantId, quality);
    else {
      this.qualityBy.clear();
      this.qualityAll = quality;
    }
    return this.sendData('data', 'sfu', JSON.stringify(msg));
  }

  /** The participant id the SFU put in the msid of m-line `mid` of the current remote description. */
  _ownerOf(mid) {
    const sdp = this.pc.remoteDescription?.sdp || '';
    for (const section of sdp.split(/\r?\nm=/).slice(1)) {
      const m = section.match(/\r?\na=mid:(\S+)/);
      if (!m || m[1] !== mid) continue;
      const msid = section.match(/\r?\na=msid:(\S+) (\S+)/);
      if (!msid) return null;
      const i = msid[2].indexOf('.');
      return i > 0 ? msid[2].slice(0, i) : null;
    }
    return null;
  }

  _onTrack({ track, streams, transceiver }) {
    const room = this.room;
    const mid = transceiver?.mid;
    const owner = mid != null ? this._ownerOf(mid) : null;
    if (!owner || (room.localParticipant && owner === room.localParticipant.id)) return;
    let p = room.participants.get(owner);
    if (!p) {
      // A publisher that is not in the signaling roster (WHIP).
      p = room._addParticipant({ id: owner, identity: owner, name: owner });
      p._viaSfu = true;
    }
    this.midOwner.set(mid, owner);
    this.trackOwner.set(track.id, owner);
    const stream = streams[0] || new MediaStream([track]);
    p.streams.set(stream.id, stream);
    p.tracks.add(track);
    const gone = () => {
      if (!p.tracks.has(track)) return;
      p.tracks.delete(track);
      if (stream.getTracks().length === 0) p.streams.delete(stream.id);
      room.emit('track_removed', p, track, stream);
      if (p._viaSfu && p.tracks.size === 0 && room.participants.get(p.id) === p) room._removeParticipant(p.id, 'left');
    };
    stream.addEventListener('removetrack', (ev) => {
      if (ev.track === track) gone();
    });
    track.addEventListener('ended', gone);
    room.emit('track', p, track, stream);
    room.emit('connection_state', p, this.pc.connectionState);
  }

  /** Stats of the SFU connection, split by the participant each inbound track comes from. */
  async statsByParticipant() {
    const report = await this.pc.getStats();
    const now = performance.now();
    const sel = selectedPath(report);
    const out = {};
    for (const p of this.room.participants.values()) out[p.id] = { ...emptyPeerStats(p, this.pc, sel), via: 'sfu' };
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const owner = this.trackOwner.get(s.trackIdentifier) || (s.mid != null ? this.midOwner.get(String(s.mid)) : undefined);
      const o = owner && out[owner];
      if (!o) return;
      o.bytesReceived += s.bytesReceived || 0;
      addInbound(o, s);
    });
    for (const o of Object.values(out)) {
      const prev = this.prevByParticipant.get(o.participantId);
      if (prev && now > prev.t) o.inboundBitrate = Math.max(0, ((o.bytesReceived - prev.rx) * 8) / ((now - prev.t) / 1000));
      this.prevByParticipant.set(o.participantId, { t: now, rx: o.bytesReceived });
      const recv = o.video.packetsReceived + o.audio.packetsReceived;
      const lost = o.video.packetsLost + o.audio.packetsLost;
      o.packetLoss = recv + lost > 0 ? lost / (recv + lost) : 0;
    }
    return out;
  }
}

/**
 * A room session. Create with `connect(url, token, options)`, or `new Room(url, token, options)`, attach
 * handlers, optionally `publish()`, then `await room.connect()`.
 */
export class Room extends Emitter {
  constructor(url, token, options = {}) {
    super();
    this.url = wsUrlFrom(url);
    this.token = token;
    this.options = { iceTransportPolicy: 'all', reconnect: true, ...options };
    this.localParticipant = null;
    /** @type {Map<string, Participant>} remote participants by id */
    this.participants = new Map();
    /** @type {Map<string, Peer>} */
    this.peers = new Map();
    /** @type {Participant|null} SFU rooms: the loudest participant (`active_speaker` events) */
    this.activeSpeaker = null;
    /** @type {SfuPeer|null} the connection to the SFU (sfu rooms only) */
    this.sfu = null;
    this.iceServers = [];
    this.roomInfo = null;
    this.permissions = null;
    this.signalingState = 'new';
    this.resumeToken = null;
    this.reconnectGraceMs = 20000;
    this.localStreams = { camera: null, screen: null };
    this.localMetadata = { ...(options.metadata || {}) };
    this._ws = null;
    this._left = false;
    this._pingTimer = null;
    this._lastPong = 0;
    this._pongWaiters = new Map();
    this._reconnectAttempt = 0;
    this._reconnectTimer = null;
    this._disconnectedSince = 0;
  }

  /** Opens the socket and joins; resolves once `joined` arrived (rejects on a join error). */
  connect() {
    return new Promise((resolve, reject) => {
      this._openSocket(false, resolve, reject);
    });
  }

  _signalingOpen() {
    return this._ws && this._ws.readyState === WebSocket.OPEN && this.signalingState === 'connected';
  }

  _setSignalingState(state) {
    if (this.signalingState === state) return;
    this.signalingState = state;
    this.emit('signaling_state', state);
  }

  _emitError(code, message, fatal = false) {
    this.emit('error', { code, message, fatal });
  }

  _openSocket(resume, resolve, reject) {
    if (this._left) return;
    this._setSignalingState(resume ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      reject?.(err);
      return;
    }
    this._ws = ws;
    let settled = false;
    let fatal = null;
    ws.onopen = () => {
      const join = { type: 'join', token: this.token, protocol: PROTOCOL_VERSION };
      if (resume && this.resumeToken) join.resume_token = this.resumeToken;
      if (Object.keys(this.localMetadata).length) join.metadata = this.localMetadata;
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        this._emitError('bad_message', 'server sent a message that is not JSON');
        return;
      }
      if (msg.type === 'joined') {
        this._reconnectAttempt = 0;
        this._onJoined(msg, resume);
        if (!settled) {
          settled = true;
          resolve?.(this);
        }
      } else if (msg.type === 'error') {
        const isFatal = FATAL_CODES.has(msg.code);
        if (isFatal) fatal = msg;
        this._emitError(msg.code, msg.message || msg.code, isFatal && !(resume && msg.code === 'unauthorized'));
      } else {
        this._onMessage(msg);
      }
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._stopPing();
      if (this._left) {
        this._setSignalingState('disconnected');
        return;
      }
      if (!settled && !resume) {
        // The first join failed: report it, no retry.
        settled = true;
        this._setSignalingState('disconnected');
        const err = new Error(fatal ? `${fatal.code}: ${fatal.message}` : `signaling socket closed (${ev.code})`);
        err.code = fatal ? fatal.code : 'closed';
        reject?.(err);
        return;
      }
      if (fatal && fatal.code === 'unauthorized' && this.resumeToken && resume) {
        // The session is gone (grace period over, or the server restarted): join afresh.
        this.resumeToken = null;
      } else if (fatal) {
        this._setSignalingState('disconnected');
        return;
      }
      if (!this.options.reconnect) {
        this._setSignalingState('disconnected');
        return;
      }
      this._scheduleReconnect();
    };
  }

  _scheduleReconnect() {
    if (this._left) return;
    this._setSignalingState('reconnecting');
    if (!this._disconnectedSince) this._disconnectedSince = Date.now();
    const attempt = this._reconnectAttempt++;
    const delay = Math.min(5000, 250 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._openSocket(true), delay);
  }

  _startPing() {
    this._stopPing();
    this._lastPong = Date.now();
    this._pingTimer = setInterval(() => {
      if (!this._signalingOpen()) return;
      if (Date.now() - this._lastPong > PING_INTERVAL_MS * 2 + 5000) {
        // No pong for two intervals: the socket is dead even if the browser has not noticed yet.
        try {
          this._ws.close();
        } catch (_) {
          /* ignore */
        }
        return;
      }
      this._send({ type: 'ping', ts: Date.now() });
    }, PING_INTERVAL_MS);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  /** Round-trip time of a `ping` to the signaling server, in ms. */
  pingServer(timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      const ts = `${Date.now()}-${randomId()}`;
      const t0 = performance.now();
      const timer = setTimeout(() => {
        this._pongWaiters.delete(ts);
        reject(new Error('ping timeout'));
      }, timeoutMs);
      this._pongWaiters.set(ts, () => {
        clearTimeout(timer);
        resolve(performance.now() - t0);
      });
      if (!this._send({ type: 'ping', ts })) {
        clearTimeout(timer);
        this._pongWaiters.delete(ts);
        reject(new Error('signaling is not connected'));
      }
    });
  }

  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  _onJoined(msg, resume) {
    const me = msg.participant;
    const sameSession = resume && msg.resumed && this.localParticipant && this.localParticipant.id === me.id;
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    this.roomInfo = msg.room || null;
    this.permissions = msg.permissions || null;
    this.resumeToken = msg.resume_token || null;
    if (msg.reconnect_grace_ms) this.reconnectGraceMs = msg.reconnect_grace_ms;
    this._disconnectedSince = 0;
    this._setSignalingState('connected');
    this._startPing();

    if (sameSession) {
      this.localParticipant._update(me);
      // Changes made while the socket was down (mute, name) were not sent: send the current state.
      if (Object.keys(this.localMetadata).length) this._send({ type: 'update', metadata: this.localMetadata });
      const roster = new Map((msg.participants || []).map((p) => [p.id, p]));
      for (const id of [...this.participants.keys()]) {
        if (!roster.has(id)) this._removeParticipant(id, 'left');
      }
      for (const info of roster.values()) {
        const known = this.participants.get(info.id);
        if (known) {
          known._update(info);
        } else {
          // Joined during our gap: it offered to us and the offer was lost; its watchdog re-offers.
          this._addParticipant(info);
        }
      }
      if (msg.room && msg.room.mode === 'sfu' && !this.sfu) {
        // The room moved to the SFU while our socket was down.
        this._moveToSfu();
        return;
      }
      for (const peer of this.peers.values()) {
        // Fresh (time-limited) TURN credentials for the ICE restarts to come.
        try {
          peer.pc.setConfiguration({ ...peer.pc.getConfiguration(), iceServers: this.iceServers });
        } catch (_) {
          /* keep the old configuration */
        }
        peer.afterResume();
      }
      if (this.sfu) {
        try {
          this.sfu.pc.setConfiguration({ ...this.sfu.pc.getConfiguration(), iceServers: this.iceServers });
        } catch (_) {
          /* keep the old configuration */
        }
        this.sfu.afterResume();
      }
      return;
    }

    // A fresh session (first join, or the previous session expired): start the mesh from scratch.
    for (const id of [...this.participants.keys()]) this._removeParticipant(id, 'reconnected');
    if (this.sfu) {
      this.sfu.close();
      this.sfu = null;
    }
    this.localParticipant = new Participant(me, true);
    this.localParticipant.metadata = { ...this.localMetadata, ...(me.metadata || {}) };
    const roster = msg.participants || [];
    // Handlers are attached after `await connect()`: announce the roster and start offering on the next task.
    setTimeout(() => {
      if (this._left) return;
      if (this.roomInfo && this.roomInfo.mode === 'sfu') {
        // SFU room: one connection to the server carries everything; no peer connection per participant.
        for (const info of roster) if (!this.participants.has(info.id)) this._addParticipant(info);
        if (!this.sfu) {
          this.sfu = new SfuPeer(this);
          this.sfu.attachLocal();
          this._resendTileWishes();
        }
        return;
      }
      for (const info of roster) {
        if (this.participants.has(info.id)) continue;
        const p = this._addParticipant(info);
        // Mesh rule: the participant who joins later sends the first offer to each one already present.
        const peer = this._ensurePeer(p);
        peer.attachLocal();
      }
    }, 0);
  }

  /**
   * Mesh → SFU (an `auto` room passed its threshold): closes every mesh peer connection and publishes to the
   * SFU instead. Participants stay (no `participant_left`); their tracks are removed and come back through the SFU.
   */
  _moveToSfu() {
    if (this._left || this.sfu) return;
    this.roomInfo = { ...(this.roomInfo || {}), mode: 'sfu' };
    for (const [id, peer] of [...this.peers]) {
      peer.close();
      this.peers.delete(id);
      const p = this.participants.get(id);
      if (!p) continue;
      for (const stream of [...p.streams.values()]) {
        for (const track of stream.getTracks()) {
          if (!p.tracks.has(track)) continue;
          p.tracks.delete(track);
          this.emit('track_removed', p, track, stream);
        }
      }
      p.tracks.clear();
      p.streams.clear();
    }
    this.sfu = new SfuPeer(this);
    this.sfu.attachLocal();
    this._resendTileWishes();
    this.emit('room_mode', 'sfu');
  }

  _addParticipant(info) {
    const p = new Participant(info);
    this.participants.set(p.id, p);
    this.emit('participant_joined', p);
    return p;
  }

  _removeParticipant(id, reason) {
    const p = this.participants.get(id);
    this.sfu?.participantGone(id);
    const peer = this.peers.get(id);
    if (peer) {
      peer.close();
      this.peers.delete(id);
    }
    if (p) {
      this.participants.delete(id);
      this.emit('participant_left', p, reason);
    }
  }

  _ensurePeer(participant) {
    let peer = this.peers.get(participant.id);
    if (!peer) {
      peer = new Peer(this, participant);
      this.peers.set(participant.id, peer);
    }
    return peer;
  }

  _onMessage(msg) {
    switch (msg.type) {
      case 'participant_joined': {
        const info = msg.participant;
        if (!info || !info.id) return;
        if (this.participants.has(info.id)) this.participants.get(info.id)._update(info);
        else this._addParticipant(info);
        // The newcomer offers to us; our peer connection is created when its offer arrives.
        break;
      }
      case 'participant_left':
        this._removeParticipant(msg.id, msg.reason || 'left');
        break;
      case 'participant_updated': {
        const info = msg.participant;
        if (!info) return;
        if (this.localParticipant && info.id === this.localParticipant.id) {
          this.localParticipant._update(info);
          this.emit('participant_updated', this.localParticipant);
          return;
        }
        const p = this.participants.get(info.id);
        if (p) {
          p._update(info);
          this.emit('participant_updated', p);
        }
        break;
      }
      case 'active_speaker': {
        // SFU rooms: the loudest participant (audio levels seen by the SFU) changed.
        const me = this.localParticipant;
        const p = me && msg.id === me.id ? me : this.participants.get(msg.id);
        this.activeSpeaker = p || null;
        if (p) this.emit('active_speaker', p);
        break;
      }
      case 'room_mode':
        // An `auto` room outgrew the mesh: move to the SFU without leaving.
        if (msg.mode === 'sfu') this._moveToSfu();
        break;
      case 'offer':
      case 'answer': {
        if (msg.from === 'sfu') {
          const sfu = this.sfu;
          if (sfu) sfu.enqueue(() => sfu.onDescription(msg.type, msg.sdp));
          break;
        }
        if (this.sfu) break; // a mesh peer that has not moved to the SFU yet
        let p = this.participants.get(msg.from);
        if (!p) p = this._addParticipant({ id: msg.from, identity: msg.from, name: msg.from });
        const peer = this._ensurePeer(p);
        peer.enqueue(() => peer.onDescription(msg.type, msg.sdp));
        break;
      }
      case 'candidate': {
        if (msg.from === 'sfu') {
          const sfu = this.sfu;
          if (sfu) sfu.enqueue(() => sfu.onCandidate(msg.candidate));
          break;
        }
        if (this.sfu) break;
        const peer = this.peers.get(msg.from);
        if (peer) peer.enqueue(() => peer.onCandidate(msg.candidate));
        break;
      }
      case 'ice_servers': {
        // Fresh (time-limited) TURN credentials, pushed before the previous ones expire: for the ICE restarts and
        // new relay allocations to come (as on resume).
        if (!Array.isArray(msg.ice_servers)) break;
        this.iceServers = msg.ice_servers;
        for (const pc of [...[...this.peers.values()].map((p) => p.pc), this.sfu && this.sfu.pc]) {
          if (!pc) continue;
          try {
            pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.iceServers });
          } catch (_) {
            /* keep the old configuration */
          }
        }
        this.emit('ice_servers', this.iceServers);
        break;
      }
      case 'pong': {
        this._lastPong = Date.now();
        const w = this._pongWaiters.get(msg.ts);
        if (w) {
          this._pongWaiters.delete(msg.ts);
          w();
        }
        break;
      }
      default:
        break;
    }
  }

  _localTracks() {
    const out = [];
    for (const stream of [this.localStreams.camera, this.localStreams.screen]) {
      if (!stream) continue;
      for (const track of stream.getTracks()) out.push({ track, stream });
    }
    return out;
  }

  /**
   * Publishes camera, microphone and/or screen. `camera`/`microphone` may be `true` or constraints; or pass a
   * ready `stream`. Returns the local MediaStreams `{camera, screen}`.
   */
  async publish({ camera = false, microphone = false, screen = false, stream = null } = {}) {
    if (stream) {
      this._setCameraStream(stream);
    } else if (camera || microphone) {
      const s = await navigator.mediaDevices.getUserMedia({
        video: camera ? (camera === true ? { width: 640, height: 480 } : camera) : false,
        audio: microphone ? (microphone === true ? true : microphone) : false,
      });
      this._setCameraStream(s);
    }
    if (screen) {
      const s = await navigator.mediaDevices.getDisplayMedia({ video: screen === true ? true : screen, audio: false });
      this.localStreams.screen = s;
      for (const track of s.getTracks()) {
        track.addEventListener('ended', () => this.unpublish({ screen: true }));
        for (const peer of this.peers.values()) if (peer.tracksAttached) peer.addTrack(track, s);
        if (this.sfu?.tracksAttached) this.sfu.addTrack(track, s);
      }
    }
    this._announceStreams();
    return this.localStreams;
  }

  _setCameraStream(s) {
    const cur = this.localStreams.camera;
    if (!cur) {
      this.localStreams.camera = s;
    } else {
      for (const t of s.getTracks()) cur.addTrack(t);
    }
    const stream = this.localStreams.camera;
    for (const track of s.getTracks()) {
      for (const peer of this.peers.values()) if (peer.tracksAttached) peer.addTrack(track, stream);
      if (this.sfu?.tracksAttached) this.sfu.addTrack(track, stream);
    }
  }

  _announceStreams() {
    const streams = {};
    if (this.localStreams.camera) streams[this.localStreams.camera.id] = 'camera';
    if (this.localStreams.screen) streams[this.localStreams.screen.id] = 'screen';
    this.updateMetadata({ streams });
  }

  /** Stops and removes published media: `{camera, microphone, screen}` (all when called without argument). */
  unpublish({ camera, microphone, screen } = { camera: true, microphone: true, screen: true }) {
    const drop = (stream, track) => {
      track.stop();
      stream.removeTrack(track);
      for (const peer of this.peers.values()) peer.removeTrack(track);
      this.sfu?.removeTrack(track);
    };
    const cam = this.localStreams.camera;
    if (cam) {
      for (const t of cam.getTracks()) {
        if ((t.kind === 'video' && camera) || (t.kind === 'audio' && microphone)) drop(cam, t);
      }
      if (cam.getTracks().length === 0) this.localStreams.camera = null;
    }
    const scr = this.localStreams.screen;
    if (screen && scr) {
      for (const t of scr.getTracks()) drop(scr, t);
      this.localStreams.screen = null;
    }
    this._announceStreams();
  }

  /** Mutes ('audio' or 'video') the camera stream's tracks (sends silence/black) and tells the room. */
  mute(kind, muted = true) {
    const cam = this.localStreams.camera;
    if (cam) for (const t of cam.getTracks()) if (t.kind === kind) t.enabled = !muted;
    this.updateMetadata({ [kind === 'audio' ? 'muted_audio' : 'muted_video']: muted });
  }

  unmute(kind) {
    this.mute(kind, false);
  }

  /** Merges `patch` into the local participant's metadata and broadcasts it (`update`). */
  updateMetadata(patch) {
    this.localMetadata = { ...this.localMetadata, ...patch };
    if (this.localParticipant) {
      this.localParticipant.metadata = { ...this.localMetadata };
      this.emit('participant_updated', this.localParticipant);
    }
    return this._send({ type: 'update', metadata: this.localMetadata });
  }

  /** Changes the display name. */
  setName(name) {
    if (this.localParticipant) this.localParticipant.name = name;
    return this._send({ type: 'update', name });
  }

  _encode(data) {
    if (typeof data === 'string' || data instanceof ArrayBuffer || ArrayBuffer.isView(data) || data instanceof Blob) return data;
    return JSON.stringify(data);
  }

  /** Sends to every participant over data channels. `reliable: false` uses an unordered, no-retransmit channel. Returns how many peers it was sent to now (others get it when their channel opens). */
  send(data, { reliable = true } = {}) {
    let n = 0;
    const payload = this._encode(data);
    if (this.sfu) {
      if (!this.sfu.sendData(reliable ? 'data' : 'lossy', '', payload)) return 0;
      for (const p of this.participants.values()) if (!p._viaSfu) n++;
      return n;
    }
    for (const peer of this.peers.values()) if (peer._sendOn(reliable ? 'data' : 'lossy', payload)) n++;
    return n;
  }

  /** Sends to one participant. */
  sendTo(participantId, data, { reliable = true } = {}) {
    if (this.sfu) {
      if (!this.participants.has(participantId)) throw new Error(`unknown participant ${participantId}`);
      return this.sfu.sendData(reliable ? 'data' : 'lossy', participantId, this._encode(data));
    }
    const peer = this.peers.get(participantId);
    if (!peer) throw new Error(`unknown participant ${participantId}`);
    return peer._sendOn(reliable ? 'data' : 'lossy', this._encode(data));
  }

  /**
   * Sends a file (any Blob) to one participant or everyone, in 16 KiB chunks with back-pressure; the receiver
   * verifies its SHA-256. Emits `file_progress` events; resolves with one `{participantId, ok, sha256}` per peer.
   */
  async sendFile(file, participantId) {
    const id = randomId();
    if (this.sfu) {
      if (participantId && !this.participants.has(participantId)) throw new Error(`unknown participant ${participantId}`);
      const targets = participantId ? [participantId] : [...this.participants.values()].filter((p) => !p._viaSfu).map((p) => p.id);
      if (targets.length === 0) throw new Error('nobody to send the file to');
      return this.sfu.sendFileTo(file, id, targets, participantId || '', (bytes) => {
        this.emit('file_progress', { id, direction: 'send', participant: null, name: file.name, bytes, size: file.size });
      });
    }
    const peers = participantId ? [this.peers.get(participantId)].filter(Boolean) : [...this.peers.values()];
    if (peers.length === 0) throw new Error('nobody to send the file to');
    const sentBy = new Map();
    const progress = () => {
      let bytes = 0;
      for (const v of sentBy.values()) bytes += v;
      this.emit('file_progress', { id, direction: 'send', participant: null, name: file.name, bytes: bytes / peers.length, size: file.size });
    };
    return Promise.all(
      peers.map((peer) =>
        peer.sendFile(file, id, (n) => {
          sentBy.set(peer.id, n);
          progress();
        }),
      ),
    );
  }

  /**
   * SFU rooms: the video quality to receive ('low' | 'medium' | 'high', default high) from `participantId`, or
   * from everyone without it. The SFU forwards the matching simulcast layer of the publisher's video. Returns
   * false outside SFU rooms (or while the connection to the SFU is not up yet: the request is sent once it is).
   */
  setSubscribeQuality(quality, participantId) {
    if (!['low', 'medium', 'high'].includes(quality)) throw new Error(`unknown quality ${quality}`);
    return this.sfu ? this.sfu.setQuality(quality, participantId) : false;
  }

  /**
   * SFU rooms: whether to receive `participantId`'s video and/or audio (`{video: false}` pauses its video: the
   * SFU stops forwarding it, without renegotiation; `{video: true}` resumes it at the next keyframe). Returns
   * false outside SFU rooms (or while the connection to the SFU is not up yet: the request is sent once it is).
   */
  setSubscription(participantId, { video, audio } = {}) {
    if (!participantId) throw new Error('setSubscription needs a participant id');
    return this.sfu ? this.sfu.setSubscription(participantId, { video, audio }) : false;
  }

  /**
   * SFU rooms: receive `participantId`'s video only while one of the elements watched for it is visible (in the
   * viewport, displayed, page not hidden), and at a quality that fits the largest visible one: a step lower
   * while the element (in device pixels) is under half the width of the video it shows, a step higher while it
   * is wider than that video. `element` is a <video> or contains one. Apps call it for each video tile; it returns
   * a function that stops watching `element` (call it when the tile goes). Outside SFU rooms the wishes are kept
   * and sent once the room moves to the SFU.
   */
  observeTile(participantId, element) {
    if (!this._tiles) {
      this._tiles = new Map(); // element -> {pid, visible, width, video}
      this._tileWishes = new Map(); // participant id -> {q: 0..2, wish: 'off' | quality (as last sent)}
      const update = () => this._updateTileWishes();
      this._tileUpdate = update;
      this._tileIo = typeof IntersectionObserver === 'function'
        ? new IntersectionObserver((entries) => {
          for (const e of entries) {
            const t = this._tiles.get(e.target);
            if (t) t.visible = e.isIntersecting;
          }
          update();
        })
        : null;
      this._tileRo = typeof ResizeObserver === 'function'
        ? new ResizeObserver((entries) => {
          for (const e of entries) {
            const t = this._tiles.get(e.target);
            if (t) t.width = e.contentRect.width;
          }
          update();
        })
        : null;
      if (typeof document !== 'undefined') document.addEventListener('visibilitychange', update);
    }
    const video = element.tagName === 'VIDEO' ? element : element.querySelector('video');
    this._tiles.set(element, { pid: participantId, visible: true, width: element.clientWidth, video });
    // A layer switch changes the video's size: look again.
    video?.addEventListener('resize', this._tileUpdate);
    this._tileIo?.observe(element);
    this._tileRo?.observe(element);
    this._updateTileWishes();
    return () => {
      if (!this._tiles.delete(element)) return;
      video?.removeEventListener('resize', this._tileUpdate);
      this._tileIo?.unobserve(element);
      this._tileRo?.unobserve(element);
      this._updateTileWishes();
    };
  }

  _updateTileWishes() {
    if (!this._tiles) return;
    const pageHidden = typeof document !== 'undefined' && document.visibilityState === 'hidden';
    const ratio = (typeof window !== 'undefined' && window.devicePixelRatio) || 1;
    const seen = new Map(); // pid -> {px: widest visible element, video: width of the video it shows}
    for (const [el, t] of this._tiles) {
      const shown = !pageHidden && t.visible && el.isConnected && t.width > 0;
      const cur = seen.get(t.pid) || { px: 0, video: 0 };
      if (shown && t.width * ratio >= cur.px) seen.set(t.pid, { px: t.width * ratio, video: t.video?.videoWidth || 0 });
      else seen.set(t.pid, cur);
    }
    const QUALITIES = ['low', 'medium', 'high'];
    for (const [pid, { px, video }] of seen) {
      const st = this._tileWishes.get(pid) || { q: 2, wish: 'high' };
      if (px > 0 && video > 0) {
        if (px < video / 2 && st.q > 0) st.q -= 1;
        else if (px > video && st.q < 2) st.q += 1;
      }
      const wish = px <= 0 ? 'off' : QUALITIES[st.q];
      const changed = wish !== st.wish || !this._tileWishes.has(pid);
      st.wish = wish;
      this._tileWishes.set(pid, st);
      if (changed) this._sendTileWish(pid, wish);
    }
    // A participant without tiles any more: back to the defaults.
    for (const pid of [...this._tileWishes.keys()]) {
      if (seen.has(pid)) continue;
      this._tileWishes.delete(pid);
      this._sendTileWish(pid, 'high');
    }
  }

  _sendTileWish(pid, wish) {
    if (!this.sfu) return;
    if (wish === 'off') {
      this.sfu.setSubscription(pid, { video: false });
    } else {
      this.sfu.setQuality(wish, pid);
      this.sfu.setSubscription(pid, { video: true });
    }
  }

  /** A new connection to the SFU learns the tiles' wishes again. */
  _resendTileWishes() {
    if (!this._tileWishes) return;
    for (const [pid, st] of this._tileWishes) this._sendTileWish(pid, st.wish);
  }

  /** Stats of every peer connection, keyed by participant id (see `PeerStats` in the .d.ts). */
  async getStats() {
    if (this.sfu) return this.sfu.statsByParticipant();
    const out = {};
    await Promise.all([...this.peers.values()].map(async (peer) => {
      out[peer.id] = await peer.stats();
    }));
    return out;
  }

  /** Stats of the peer connection to one participant. */
  getPeerStats(participantId) {
    if (this.sfu) return this.sfu.statsByParticipant().then((all) => all[participantId] || null);
    const peer = this.peers.get(participantId);
    return peer ? peer.stats() : Promise.resolve(null);
  }

  /** The RTCPeerConnection to a participant (for advanced use). */
  getPeerConnection(participantId) {
    if (this.sfu) return this.participants.has(participantId) ? this.sfu.pc : null;
    return this.peers.get(participantId)?.pc || null;
  }

  /** Closes the signaling socket without leaving (as a network cut would): the SDK reconnects and resumes. */
  dropSignaling() {
    try {
      this._ws?.close();
    } catch (_) {
      /* ignore */
    }
  }

  /** Leaves the room: sends `leave`, closes every peer connection and stops local media. */
  leave() {
    if (this._left) return;
    this._send({ type: 'leave' });
    this._left = true;
    clearTimeout(this._reconnectTimer);
    this._stopPing();
    for (const id of [...this.peers.keys()]) {
      this.peers.get(id).close();
      this.peers.delete(id);
    }
    if (this.sfu) {
      this.sfu.close();
      this.sfu = null;
    }
    for (const s of [this.localStreams.camera, this.localStreams.screen]) if (s) s.getTracks().forEach((t) => t.stop());
    this.localStreams = { camera: null, screen: null };
    try {
      this._ws?.close(1000, 'leave');
    } catch (_) {
      /* ignore */
    }
    this._setSignalingState('disconnected');
  }
}

/** Connects and joins: `await connect('/ws', token, {iceTransportPolicy: 'relay'})`. */
export async function connect(url, token, options = {}) {
  const room = new Room(url, token, options);
  await room.connect();
  return room;
}

/** Dev mode only: fetches a token from `GET /dev/token?room=&name=` on the server at `base` (default: this page's origin). */
export async function devToken(room, name, base) {
  const u = new URL('/dev/token', base || (typeof location !== 'undefined' ? location.origin : 'http://127.0.0.1:8080'));
  u.searchParams.set('room', room);
  u.searchParams.set('name', name);
  const res = await fetch(u);
  if (!res.ok) throw new Error(`GET /dev/token: HTTP ${res.status}`);
  return res.json();
}
