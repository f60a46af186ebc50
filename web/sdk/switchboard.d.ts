// Hand-written types for the Switchboard browser SDK (`switchboard.js`), protocol version 1.

/** The signaling protocol version this SDK speaks. */
export const PROTOCOL_VERSION: 1;

/** Metadata object of a participant. The SDK itself writes `muted_audio`, `muted_video` and `streams`. */
export interface ParticipantMetadata {
  /** The participant muted its microphone. */
  muted_audio?: boolean;
  /** The participant turned its camera off. */
  muted_video?: boolean;
  /** What each published MediaStream carries, by stream id (stream ids survive the trip to the receiver). */
  streams?: Record<string, 'camera' | 'screen'>;
  [key: string]: unknown;
}

/** A participant as described by the server. */
export interface ParticipantInfo {
  id: string;
  identity: string;
  name?: string;
  metadata?: ParticipantMetadata;
}

export class Participant {
  /** Server-assigned id (`p_...`), stable across a resumed reconnect. */
  readonly id: string;
  /** The token's `sub`, unique within the room. */
  identity: string;
  /** Display name. */
  name: string;
  metadata: ParticipantMetadata;
  readonly isLocal: boolean;
  /** Remote streams received from this participant, by stream id. */
  readonly streams: Map<string, MediaStream>;
  /** Remote tracks received from this participant. */
  readonly tracks: Set<MediaStreamTrack>;
  readonly audioMuted: boolean;
  readonly videoMuted: boolean;
  /** 'camera', 'screen' or undefined, from the publisher's metadata. */
  streamKind(streamId: string): 'camera' | 'screen' | undefined;
}

export type SignalingState = 'new' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/** An `error` from the server (`code` as in docs/protocol.md) or from the SDK (`negotiation_failed`, `bad_message`). */
export interface SwitchboardError {
  code: string;
  message: string;
  /** The session is over (no reconnect will be attempted). */
  fatal: boolean;
}

export interface FileProgress {
  /** Transfer id (the same on sender and receiver). */
  id: string;
  direction: 'send' | 'receive';
  /** The sender (on receive); null on send. */
  participant: Participant | null;
  name: string;
  /** Bytes sent (averaged over receivers) or received so far. */
  bytes: number;
  size: number;
}

export interface ReceivedFile {
  id: string;
  name: string;
  size: number;
  mime: string;
  blob: Blob;
  /** SHA-256 (hex) of what arrived. */
  sha256: string;
  /** SHA-256 (hex) the sender computed. */
  expectedSha256: string;
  /** Size and checksum match. */
  checksumOk: boolean;
}

export interface FileSendResult {
  participantId: string;
  /** The receiver verified the checksum. */
  ok: boolean;
  sha256: string;
}

export interface CandidateInfo {
  /** 'host' | 'srflx' | 'prflx' | 'relay' */
  type: string;
  protocol: string;
  address?: string;
  port?: number;
  /** For relay candidates: transport to the TURN server ('udp' | 'tcp' | 'tls'). */
  relayProtocol?: string;
}

/** Stats of one peer connection (`room.getStats()[participantId]`). Counters are cumulative; bitrates are over the interval since the previous call. */
export interface PeerStats {
  participantId: string;
  name: string;
  connectionState: RTCPeerConnectionState;
  iceConnectionState: RTCIceConnectionState;
  /** Local candidate of the selected pair. */
  local: CandidateInfo | null;
  /** Remote candidate of the selected pair. */
  remote: CandidateInfo | null;
  /** 'relay' when either side of the selected pair is a TURN relay, else 'direct'; null before a pair is selected. */
  path: 'direct' | 'relay' | null;
  /** Current ICE round-trip time in ms. */
  rttMs: number | null;
  bytesSent: number;
  bytesReceived: number;
  /** bit/s */
  inboundBitrate: number;
  /** bit/s */
  outboundBitrate: number;
  video: { framesDecoded: number; framesReceived: number; packetsReceived: number; packetsLost: number; frameWidth: number; frameHeight: number };
  audio: { totalSamplesReceived: number; packetsReceived: number; packetsLost: number };
  /** Lost / (received + lost) over all inbound RTP streams. */
  packetLoss: number;
  dataChannels: Record<string, { state: string; messagesSent: number; messagesReceived: number; bytesSent: number; bytesReceived: number }>;
  timestamp: number;
}

export interface ConnectOptions {
  /** 'relay' forces every peer connection through TURN. Default 'all'. */
  iceTransportPolicy?: RTCIceTransportPolicy;
  /** Reconnect (and resume) when the signaling socket drops. Default true. */
  reconnect?: boolean;
  /** SFU rooms: publish video as three simulcast layers (rid q/h/f). Default true. */
  simulcast?: boolean;
  /**
   * Video codec to prefer when publishing ('vp8', 'h264', 'vp9', 'av1'), if the browser has it; the SFU forwards
   * whatever was negotiated (simulcast included). Default: the browser's order (VP8 first in Chromium).
   */
  videoCodec?: 'vp8' | 'h264' | 'vp9' | 'av1' | string;
  /** Initial metadata sent with `join`. */
  metadata?: ParticipantMetadata;
}

export interface PublishOptions {
  /** `true` or video constraints. */
  camera?: boolean | MediaTrackConstraints;
  /** `true` or audio constraints. */
  microphone?: boolean | MediaTrackConstraints;
  /** `true` or getDisplayMedia video constraints. */
  screen?: boolean | MediaTrackConstraints;
  /** Publish this stream as the "camera" stream instead of calling getUserMedia. */
  stream?: MediaStream;
}

export interface RoomEvents {
  participant_joined: (participant: Participant) => void;
  participant_left: (participant: Participant, reason: string) => void;
  /** Name or metadata changed (mute state, streams); also fired for `room.localParticipant`. */
  participant_updated: (participant: Participant) => void;
  track: (participant: Participant, track: MediaStreamTrack, stream: MediaStream) => void;
  track_removed: (participant: Participant, track: MediaStreamTrack, stream: MediaStream) => void;
  /** A data-channel message; `channel` is 'data' (reliable) or 'lossy'. Strings arrive as strings, binary as ArrayBuffer. */
  data: (participant: Participant, message: string | ArrayBuffer, channel: string) => void;
  channel_open: (participant: Participant, channel: string) => void;
  /** RTCPeerConnection.connectionState of the link to a participant. */
  connection_state: (participant: Participant, state: RTCPeerConnectionState) => void;
  signaling_state: (state: SignalingState) => void;
  error: (error: SwitchboardError) => void;
  file_progress: (progress: FileProgress) => void;
  file: (participant: Participant, file: ReceivedFile) => void;
  /** SFU rooms: the loudest participant changed (may be `room.localParticipant`). */
  active_speaker: (participant: Participant) => void;
  /** An `auto` room moved from mesh to the SFU (mesh peer connections closed; tracks come back through the SFU). */
  room_mode: (mode: 'sfu') => void;
  /**
   * The server pushed fresh ICE servers (renewed time-limited TURN credentials) before the previous ones expire;
   * they are already applied to every RTCPeerConnection (`setConfiguration`) and in `room.iceServers`.
   */
  ice_servers: (iceServers: RTCIceServer[]) => void;
}

export class Room {
  /** `url`: the signaling endpoint (`/ws`, `ws://host/ws`, or an http(s) base URL). */
  constructor(url: string, token: string, options?: ConnectOptions);
  /** Opens the socket and sends `join`; resolves once `joined` arrived, rejects with `err.code` on a join error. */
  connect(): Promise<Room>;

  readonly url: string;
  readonly options: ConnectOptions;
  /** Set once joined. */
  readonly localParticipant: Participant | null;
  /** Remote participants by id. */
  readonly participants: Map<string, Participant>;
  readonly iceServers: RTCIceServer[];
  /**
   * `mode` is `mesh` (one RTCPeerConnection per remote participant) or `sfu` (one RTCPeerConnection to the server,
   * which forwards every participant's tracks; events, `participants` and `getStats()` look the same). In `sfu`
   * rooms `peers` stays empty and data channels (`send`, `sendTo`, `sendFile`) go through the SFU, which relays
   * them to the others with the sender's id. Publishers the server forwards that are not in the signaling roster
   * (WHIP, `whip_<id>`) appear as participants too. An `auto` room reports `mesh` until it outgrows the mesh,
   * then `sfu` (event `room_mode`).
   */
  readonly roomInfo: { name: string; mode: string } | null;
  /** SFU rooms: the loudest participant, from `active_speaker` events. */
  readonly activeSpeaker: Participant | null;
  readonly permissions: { can_publish: boolean; can_subscribe: boolean; can_publish_data: boolean } | null;
  readonly signalingState: SignalingState;
  readonly localStreams: { camera: MediaStream | null; screen: MediaStream | null };

  on<E extends keyof RoomEvents>(event: E, fn: RoomEvents[E]): this;
  off<E extends keyof RoomEvents>(event: E, fn?: RoomEvents[E]): this;
  once<E extends keyof RoomEvents>(event: E, fn: RoomEvents[E]): this;

  /** Publishes camera/microphone (getUserMedia) and/or screen (getDisplayMedia). May be called before `connect()`. */
  publish(options: PublishOptions): Promise<{ camera: MediaStream | null; screen: MediaStream | null }>;
  /** Stops and removes published media (all when called without argument). */
  unpublish(options?: { camera?: boolean; microphone?: boolean; screen?: boolean }): void;
  /** Mutes local audio or video (the track sends silence/black) and sets `muted_audio` / `muted_video` in the metadata. */
  mute(kind: 'audio' | 'video', muted?: boolean): void;
  unmute(kind: 'audio' | 'video'): void;
  /**
   * SFU rooms: the video quality (simulcast layer) to receive from `participantId`, or from everyone without it.
   * Returns false outside SFU rooms.
   */
  setSubscribeQuality(quality: 'low' | 'medium' | 'high', participantId?: string): boolean;
  /**
   * SFU rooms: whether to receive a participant's video and/or audio. `{video: false}` pauses its video (the SFU
   * stops forwarding it, no renegotiation); `{video: true}` resumes it at the next keyframe.
   */
  setSubscription(participantId: string, wish: { video?: boolean; audio?: boolean }): boolean;
  /**
   * SFU rooms: receive `participantId`'s video only while one of its watched elements (a <video>, or an element
   * containing one) is visible, at a quality fitting the largest visible one (a step lower while it is under half
   * the width of the video it shows, a step higher while it is wider). Returns a function that stops watching.
   */
  observeTile(participantId: string, element: Element): () => void;
  /** Merges into the local metadata and broadcasts it (`update`). */
  updateMetadata(patch: ParticipantMetadata): boolean;
  setName(name: string): boolean;

  /** Sends to everyone; returns how many peers got it now (the rest when their channel opens). Objects are sent as JSON text. */
  send(data: string | ArrayBuffer | ArrayBufferView | Blob | object, options?: { reliable?: boolean }): number;
  sendTo(participantId: string, data: string | ArrayBuffer | ArrayBufferView | Blob | object, options?: { reliable?: boolean }): boolean;
  /** Chunked, back-pressured file transfer on the dedicated `file` channel; the receiver checks SHA-256. */
  sendFile(file: Blob & { name?: string }, participantId?: string): Promise<FileSendResult[]>;

  /** Stats of every peer connection, by participant id (in `sfu` rooms: the server connection's stats, split by the participant each inbound track comes from). */
  getStats(): Promise<Record<string, PeerStats>>;
  getPeerStats(participantId: string): Promise<PeerStats | null>;
  /** The RTCPeerConnection carrying a participant's media (in `sfu` rooms: the one connection to the server). */
  getPeerConnection(participantId: string): RTCPeerConnection | null;
  /** Round-trip time of a signaling `ping`, in ms. */
  pingServer(timeoutMs?: number): Promise<number>;

  /** Closes the signaling socket as a network cut would (testing aid): the SDK reconnects and resumes. */
  dropSignaling(): void;
  /** Sends `leave`, closes every peer connection and stops local media. */
  leave(): void;
}

/** `new Room(url, token, options)` + `connect()`. */
export function connect(url: string, token: string, options?: ConnectOptions): Promise<Room>;

/** Dev mode only: `GET /dev/token?room=&name=` on `base` (default: the page's origin). */
export function devToken(room: string, name: string, base?: string): Promise<{ token: string; identity: string }>;

/** Lowercase hex SHA-256 of a Blob or ArrayBuffer (crypto.subtle). */
export function sha256Hex(data: Blob | ArrayBuffer): Promise<string>;
