// Types of wsflask.js, the JavaScript client of wsflask's JSON event routes (served at
// /wsflask.d.ts next to /wsflask.js). See wsflask.js for the wire format.

/** Close codes after which the client does not reconnect (1002, 1003, 1007, 1008). */
export declare const DO_NOT_RETRY: readonly number[];

/** A JSON value: what an event's data, an ack or a handler's result may be. */
export type JSONValue =
  | null
  | boolean
  | number
  | string
  | JSONValue[]
  | { [key: string]: JSONValue };

/** The envelope on the wire, both directions. `id`: an int for client calls, "s<n>" for
 * server calls; absent for a plain event. */
export interface Envelope {
  event: string;
  data?: JSONValue;
  id?: number | string;
  /** An event to a recoverable room: the room, the publication's offset (from 1) and the
   * epoch of the room's history. */
  room?: string;
  offset?: number;
  epoch?: string;
}

/** Where a client is in one recoverable room: the last publication it has. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Positions by room, as presented in the `recover` query parameter. */
export type Positions = Record<string, Position>;

/** Why a rejoin was not recovered: the server's `_recovery` reasons. */
export type RecoveryReason =
  | "too_many"
  | "trimmed"
  | "epoch_changed"
  | "unknown_offset"
  | "bad_position"
  | "unavailable";

/** The "recovery" event: the server's `_recovery` answer to a join of a recoverable room. */
export interface RecoveryInfo {
  room: string;
  /** true: every missed publication follows (`replayed` of them), then live traffic. */
  recovered: boolean;
  /** Why not recovered (refetch the state); null on a first join (nothing was asked). */
  reason: RecoveryReason | null;
  /** The room's last offset and its epoch when the server answered. */
  offset: number;
  epoch: string;
  /** How many publications the replay holds (when recovered). */
  replayed?: number;
}

/** An error reply's data: {"event": "error", "id", "data": ErrorData}. */
export interface ErrorData {
  type: string;
  message: string;
}

export interface BackoffOptions {
  /** First reconnection delay ceiling, ms (default 500); doubles per failed attempt. */
  min?: number;
  /** Cap of the delay, ms (default 30000). */
  max?: number;
}

/** Anything constructed like the browser's WebSocket (e.g. the `ws` package in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** Reconnect after an unplanned close (default true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** Full jitter: each delay uniform in [0, ceiling) (default true); false: the ceiling. */
  jitter?: boolean;
  /** Close codes that end the connection for good (default DO_NOT_RETRY). */
  noRetryCodes?: readonly number[];
  protocols?: string | string[];
  /** The WebSocket class (default globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Follow recoverable rooms' positions and present them when reconnecting; drop copies;
   * recover on an offset gap or a `_gap` notice (default true). */
  recover?: boolean;
  /** Positions to present from the first connection (e.g. `socket.positions` saved before a
   * page reload). */
  positions?: Positions;
}

export interface CallOptions {
  /** ms before the call rejects with type "Timeout" (default 10000). */
  timeout?: number;
}

export interface OpenInfo {
  /** true when this open follows a drop (a reconnection). */
  reconnected: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** close() was called. */
  deliberate: boolean;
  /** a reconnection is scheduled ("reconnect" follows). */
  willReconnect: boolean;
}

export interface ReconnectInfo {
  /** 1 for the first attempt after a drop. */
  attempt: number;
  /** ms until the attempt. */
  delay: number;
}

/** An event handler; for a server call its return value (or Promise) is the ack's data, and
 * a throw (or rejection) is sent as an error reply. */
export type EventHandler = (data: any) => unknown;

/** Why call() failed: "Timeout", "Disconnected", "NotConnected", or the error reply's type. */
export declare class CallError extends Error {
  readonly type: string;
  constructor(type: string, message: string);
}

/** A URL, or a function called for it at each (re)connection. */
export type URLSource = string | (() => string);

export declare class Socket {
  constructor(url: URLSource, options?: ConnectOptions);
  /** The URL of the current (or last) connection attempt. */
  readonly url: string;
  /** true while the WebSocket is open. */
  readonly connected: boolean;
  /** The last position seen per recoverable room (a copy): the next reconnection presents it. */
  readonly positions: Positions;
  /** Copies dropped: an offset at or below the last one seen in the same epoch. */
  readonly duplicates: number;
  /** Offset jumps seen in live traffic; each made the client reconnect and recover. */
  readonly gaps: number;
  on(event: "open", handler: (info: OpenInfo) => void): this;
  on(event: "close", handler: (info: CloseInfo) => void): this;
  on(event: "reconnect", handler: (info: ReconnectInfo) => void): this;
  /** Each join of a recoverable room; on `recovered: false` with a reason, refetch. */
  on(event: "recovery", handler: (info: RecoveryInfo) => void): this;
  /** A message that is not an envelope (e.g. app.send() raw data). */
  on(event: "message", handler: (raw: string | ArrayBuffer | Blob) => void): this;
  on(event: string, handler: EventHandler): this;
  off(event: string, handler: (...args: any[]) => unknown): this;
  /** Send {"event", "data"}; false when not connected (nothing is queued). */
  emit(event: string, data?: JSONValue): boolean;
  /** Send with an id; the ack's data, or a CallError (error reply, timeout, drop). */
  call<T = any>(event: string, data?: JSONValue, options?: CallOptions): Promise<T>;
  /** Send a raw message (not an envelope); false when not connected. */
  send(raw: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;
  /** Close for good (no reconnection); pending calls reject with "Disconnected". */
  close(code?: number, reason?: string): void;
}

/** The delay before reconnection attempt `attempt` (0-based): min * 2^attempt capped at max,
 * times a uniform random factor in [0, 1) with jitter. */
export declare function backoffDelay(
  attempt: number,
  min: number,
  max: number,
  jitter?: boolean,
  random?: () => number,
): number;

/** Open a connection to `url` (ws://, wss://, or a path on the page's server); a function
 * is called for the URL at each (re)connection. */
export declare function connect(url: URLSource, options?: ConnectOptions): Socket;
