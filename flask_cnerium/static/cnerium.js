// cnerium.js: the browser client of flask-cnerium's realtime events (SPEC §3.1).
// One file, no dependencies. ES module; `cnerium.umd.js` is the same code as a plain
// script exposing `window.Cnerium`, made from this file when first requested.
//
//   import { connect } from "/_cnerium/cnerium.js";
//   const client = connect("/ws", { rooms: ["orders"] });
//   client.on("order.created", (event) => console.log(event.payload));
//   client.on("status", (status) => console.log(status));

const DEFAULTS = {
  rooms: [],             // rooms to join now and after every reconnect
  minDelay: 500,         // ms before the first reconnect attempt
  maxDelay: 10000,       // ms cap of the backoff
  factor: 2,             // backoff growth per failed attempt
  jitter: 0.5,           // up to this fraction of the delay is randomized away
  pingInterval: 25000,   // ms between keepalive pings; 0 turns them off
  seenLimit: 1000,       // event ids remembered to drop duplicates
};

/** Open a client on `url` ("/ws", "ws://host/ws" or "http://host/ws"). */
export function connect(url, options = {}) {
  return new CneriumClient(url, options);
}

/** The WebSocket URL for `url`, resolved against the page's location. */
export function websocketUrl(url, base = globalThis.location && globalThis.location.href) {
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.toString();
}

/** The delay in ms before reconnect attempt `attempt` (0-based): exponential, jittered. */
export function backoffDelay(attempt, options = DEFAULTS, random = Math.random) {
  const { minDelay, maxDelay, factor, jitter } = { ...DEFAULTS, ...options };
  const delay = Math.min(maxDelay, minDelay * Math.pow(factor, attempt));
  return Math.round(delay * (1 - jitter * random()));
}

/** A connection that keeps itself open, re-joins its rooms and drops duplicate events. */
export class CneriumClient {
  constructor(url, options = {}) {
    this.url = websocketUrl(url);
    this.options = { ...DEFAULTS, ...options };
    this.rooms = new Set(this.options.rooms);
    this.status = "connecting";
    this._handlers = new Map();
    this._seen = new Set();
    this._attempt = 0;
    this._socket = null;
    this._retryTimer = null;
    this._pingTimer = null;
    this._lastFrame = 0;
    this._open();
  }

  /** Join `room` now (if open) and after every reconnect. */
  subscribe(room) {
    this.rooms.add(room);
    this._send({ action: "subscribe", room });
    return this;
  }

  /** Leave `room`. */
  unsubscribe(room) {
    this.rooms.delete(room);
    this._send({ action: "unsubscribe", room });
    return this;
  }

  /** Call `fn(event)` for events of `type`; "*" for every event, "status" for status changes. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return this;
  }

  /** Stop calling `fn` for `type`; without `fn`, drop every handler of `type`. */
  off(type, fn) {
    const handlers = this._handlers.get(type);
    if (handlers && fn) handlers.delete(fn);
    else this._handlers.delete(type);
    return this;
  }

  /** Close for good: no reconnect. */
  close() {
    this._stopTimers();
    this._setStatus("closed");
    if (this._socket) this._socket.close(1000, "client closed");
    this._socket = null;
  }

  // -- connection -----------------------------------------------------------------------

  _open() {
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (error) {
      this._emit("cnerium.error", { type: "cnerium.error", error: "connect", detail: String(error) });
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    socket.onopen = () => this._onOpen(socket);
    socket.onmessage = (message) => this._onMessage(message);
    socket.onclose = () => this._onClose(socket);
  }

  _onOpen(socket) {
    if (socket !== this._socket) return;
    this._attempt = 0;
    this._lastFrame = Date.now();
    for (const room of this.rooms) this._send({ action: "subscribe", room });
    this._startPing();
    this._setStatus("open");
  }

  _onClose(socket) {
    if (socket !== this._socket || this.status === "closed") return;
    this._socket = null;
    this._stopTimers();
    this._setStatus("reconnecting");
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this.status === "closed") return;
    const delay = backoffDelay(this._attempt++, this.options);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _startPing() {
    const interval = this.options.pingInterval;
    if (!interval) return;
    this._pingTimer = setInterval(() => {
      // Nothing heard for two intervals: the connection is dead without having said so.
      if (Date.now() - this._lastFrame > 2 * interval) this._socket && this._socket.close();
      else this._send({ action: "ping" });
    }, interval);
  }

  _stopTimers() {
    clearTimeout(this._retryTimer);
    clearInterval(this._pingTimer);
    this._retryTimer = this._pingTimer = null;
  }

  _send(frame) {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) {
      this._socket.send(JSON.stringify(frame));
    }
  }

  // -- frames ---------------------------------------------------------------------------

  _onMessage(message) {
    this._lastFrame = Date.now();
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.type.startsWith("cnerium.")) {
      this._emit(frame.type, frame);
    } else if (this._firstSight(frame.id)) {
      this._emit(frame.type, frame);
      this._emit("*", frame);
    }
  }

  _firstSight(id) {
    if (id === undefined || id === null) return true;
    if (this._seen.has(id)) return false;
    this._seen.add(id);
    if (this._seen.size > this.options.seenLimit) {
      this._seen.delete(this._seen.values().next().value);
    }
    return true;
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this._emit("status", status);
  }

  _emit(type, value) {
    for (const fn of this._handlers.get(type) || []) {
      try {
        fn(value, this);
      } catch (error) {
        setTimeout(() => { throw error; });
      }
    }
  }
}

export default { connect, CneriumClient, websocketUrl, backoffDelay };
