/*
 * posrelay-reliable.js: the POS side of posrelay reliable sessions (PROTOCOL.md §11,
 * subprotocol "posrelay.reliable.v1") for browsers. No dependencies; served by the relay
 * at /demo/posrelay-reliable.js. Works with any WebSocket implementation that follows the
 * browser API (pass it as `WebSocket` elsewhere, e.g. in Node).
 *
 * What it does for you:
 * - numbers what you send and keeps it until the relay acknowledges it (safe) or reports
 *   it undelivered; sends it again after a break when the relay had not made it safe;
 * - resumes after every break with the last terminal message you *processed*, so the
 *   relay sends again what you had not processed, and hands each terminal message to you
 *   once (a resend you already have is dropped);
 * - acknowledges a terminal message once your handler is done with it (or when you call
 *   processed(seq), with manualAck);
 * - reconnects by itself after the breaks the relay asks clients to survive (1001 relay
 *   shutting down, 1011, 1012, a lost connection), with backoff and jitter.
 *
 *   const pos = new PosrelayReliable({
 *     url: claimed.session_url,
 *     protocols: () => ["bearer." + token],        // called at every (re)connect
 *     onMessage: async (seq, data) => { await store(data); },  // acked once it resolves
 *     onUndelivered: (range, messages) => { ... }, // these never reached the terminal
 *     onError: (err) => { ... },                   // resume_failed (4409) and other ends
 *   });
 *   pos.connect();
 *   const seq = pos.send("<TRANSACTION>...</TRANSACTION>");
 *
 * Keep `pos.state` (plain JSON) if the page may reload, and pass it back as `state`.
 */
(function (root, factory) {
  "use strict";
  const api = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else {
    root.PosrelayReliable = api.PosrelayReliable;
    root.PosrelayReliable.SUBPROTOCOL = api.SUBPROTOCOL;
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const SUBPROTOCOL = "posrelay.reliable.v1";
  /** Close codes after which reconnecting and resuming is what the relay expects. */
  const RECONNECT = new Set([1001, 1005, 1006, 1011, 1012, 4401]);
  /** How many reports are remembered to drop repeats (the relay repeats them). */
  const SEEN_REPORTS = 256;

  class ReliableError extends Error {
    constructor(kind, message, detail) {
      super(message);
      this.name = "ReliableError";
      /** "resume_failed", "protocol", "closed", "not_selected", "foreign_state", "gave_up" */
      this.kind = kind;
      Object.assign(this, detail || {});
    }
  }

  function toBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function fromBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function isSeq(n) {
    return Number.isSafeInteger(n) && n >= 0;
  }

  /** A payload as the envelope carries it: {text} or {binary} (base64). */
  function payloadOf(data) {
    if (typeof data === "string") return { text: data };
    if (data instanceof ArrayBuffer) return { binary: toBase64(new Uint8Array(data)) };
    if (ArrayBuffer.isView(data)) {
      return { binary: toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) };
    }
    throw new TypeError("send() takes a string, an ArrayBuffer or a typed array");
  }

  function dataOf(payload) {
    return "text" in payload ? payload.text : fromBase64(payload.binary);
  }

  class PosrelayReliable {
    /**
     * @param {object} options
     * @param {string} options.url the session URL (`session_url` of a claim, or §5a's).
     * @param {string[]|function(): string[]} [options.protocols] more subprotocols to offer
     *   after posrelay.reliable.v1, e.g. ["bearer.<token>"]; a function is called at every
     *   connect (a fresh token).
     * @param {function(number, string|Uint8Array): any} options.onMessage a terminal message;
     *   it is acknowledged once this returns (or its promise resolves), unless manualAck.
     * @param {boolean} [options.manualAck] acknowledge with processed(seq) yourself.
     * @param {function(number): void} [options.onAck] every message up to seq is safe.
     * @param {function({from: number, to: number}, Array): void} [options.onUndelivered]
     *   these never reached the terminal; the messages this client still had, as sent.
     * @param {function({relaySafe: number, resent: number}): void} [options.onResumed]
     * @param {function(ReliableError): void} [options.onError] the session ended for good.
     * @param {object} [options.state] a `state` kept from an earlier instance.
     * @param {object} [options.reconnect] {initialMs: 200, maxMs: 10000, attempts: Infinity}
     * @param {function} [options.WebSocket] the WebSocket class (default: the global one).
     * @param {function} [options.setTimeout] the timer (default: the global one).
     */
    constructor(options) {
      this.options = options;
      this.WebSocket = options.WebSocket || globalThis.WebSocket;
      this.setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
      const s = options.state || {};
      this.delivered = s.delivered || 0;
      this.processedSeq = s.processed || 0;
      this.lastSent = s.lastSent || 0;
      this.settled = s.settled || 0;
      this.unsettled = (s.unsettled || []).map((m) => ({ seq: m.seq, payload: m.payload }));
      this.acked = this.processedSeq;
      this.seenReports = [];
      /** The chain of handlers still running (async onMessage), acked in order. */
      this.handling = null;
      this.ws = null;
      this.live = false;
      this.closed = false;
      this.attempt = 0;
      const r = options.reconnect || {};
      this.backoff = { initialMs: r.initialMs ?? 200, maxMs: r.maxMs ?? 10000, attempts: r.attempts ?? Infinity };
    }

    /** Plain JSON to keep (localStorage) and pass back as `state` after a reload. */
    get state() {
      return {
        // After a reload, what was handed over but not processed is wanted again.
        delivered: this.processedSeq,
        processed: this.processedSeq,
        lastSent: this.lastSent,
        settled: this.settled,
        unsettled: this.unsettled.map((m) => ({ seq: m.seq, payload: m.payload })),
      };
    }

    /** Opens the session (and keeps it open until close() or a final error). */
    connect() {
      this.closed = false;
      const extra = typeof this.options.protocols === "function"
        ? this.options.protocols()
        : this.options.protocols || [];
      const ws = new this.WebSocket(this.options.url, [SUBPROTOCOL].concat(extra.filter((p) => p !== SUBPROTOCOL)));
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.live = false;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        if (ws.protocol !== SUBPROTOCOL) {
          this.fail(new ReliableError("not_selected",
            `the relay did not select ${SUBPROTOCOL} (it selected "${ws.protocol}"): it needs protocol v1.1`));
          ws.close(1000);
          return;
        }
        // §11: the first message of every reliable session is the POS's resume.
        this.acked = this.processedSeq;
        ws.send(JSON.stringify({ type: "resume", seq: this.processedSeq }));
      };
      ws.onmessage = (ev) => {
        if (ws !== this.ws) return;
        try {
          this.handle(ev.data);
        } catch (err) {
          this.fail(err instanceof ReliableError ? err : new ReliableError("protocol", String(err && err.message)));
          ws.close(1002, "posrelay.reliable.v1 broken");
        }
      };
      ws.onclose = (ev) => {
        if (ws !== this.ws) return;
        this.ws = null;
        this.live = false;
        if (this.closed) return;
        if (RECONNECT.has(ev.code)) {
          this.scheduleReconnect();
        } else {
          this.fail(new ReliableError("closed", `the relay closed the session: ${ev.code} ${ev.reason || ""}`.trim(), { code: ev.code }));
        }
      };
    }

    /** Sends a message (string, ArrayBuffer or typed array) to the terminal; its number. */
    send(data) {
      const payload = payloadOf(data);
      const seq = ++this.lastSent;
      this.unsettled.push({ seq, payload });
      if (this.live) this.write({ type: "data", seq, ...payload });
      return seq;
    }

    /** Every terminal message up to `seq` is processed (with manualAck). */
    processed(seq) {
      const upto = Math.min(seq, this.delivered);
      if (upto > this.processedSeq) this.processedSeq = upto;
      if (this.live && this.processedSeq > this.acked) {
        this.acked = this.processedSeq;
        this.write({ type: "ack", seq: this.acked });
      }
    }

    /** Closes the session normally; the claim stays, resume it with connect(). */
    close() {
      this.closed = true;
      if (this.ws) this.ws.close(1000);
      this.ws = null;
      this.live = false;
    }

    /** Starts over after resume_failed: returns the messages never settled. */
    reset() {
      const left = this.unsettled.map((m) => ({ seq: m.seq, data: dataOf(m.payload) }));
      this.delivered = this.processedSeq = this.acked = this.lastSent = this.settled = 0;
      this.unsettled = [];
      this.seenReports = [];
      return left;
    }

    write(envelope) {
      if (this.ws) this.ws.send(JSON.stringify(envelope));
    }

    fail(err) {
      this.closed = true;
      if (this.options.onError) this.options.onError(err);
    }

    scheduleReconnect() {
      this.attempt++;
      if (this.attempt > this.backoff.attempts) {
        this.fail(new ReliableError("gave_up", `gave up after ${this.attempt - 1} reconnect attempts`));
        return;
      }
      const ceiling = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(this.attempt - 1, 20));
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      this.setTimeout(() => { if (!this.closed) this.connect(); }, delay);
    }

    settle(seq) {
      while (this.unsettled.length && this.unsettled[0].seq <= seq) this.unsettled.shift();
      if (seq > this.settled) {
        this.settled = seq;
        if (this.options.onAck) this.options.onAck(seq);
      }
    }

    handle(raw) {
      if (typeof raw !== "string") throw new ReliableError("protocol", "binary message: envelopes are JSON text");
      const m = JSON.parse(raw);
      const seq = m.seq;
      switch (m.type) {
        case "resumed": {
          if (!isSeq(seq)) throw new ReliableError("protocol", "resumed without a valid seq");
          if (seq > this.lastSent) {
            if (this.lastSent > 0 || this.unsettled.length) {
              throw new ReliableError("foreign_state",
                `the relay holds POS messages up to ${seq}, this client sent only up to ${this.lastSent}`,
                { relay: seq, ours: this.lastSent });
            }
            this.lastSent = seq; // a new client on a claim an earlier one used
          }
          this.attempt = 0;
          this.live = true;
          const resend = this.unsettled.filter((u) => u.seq > seq);
          if (this.options.onResumed) this.options.onResumed({ relaySafe: seq, resent: resend.length });
          this.settle(seq);
          for (const u of resend) this.write({ type: "data", seq: u.seq, ...u.payload });
          return;
        }
        case "ack":
          if (!isSeq(seq) || seq > this.lastSent) throw new ReliableError("protocol", `ack ${seq} of a message never sent`);
          this.settle(seq);
          return;
        case "undelivered": {
          const from = m.from_seq, to = m.to_seq;
          if (!isSeq(from) || !isSeq(to) || from < 1 || from > to || to > this.lastSent) {
            throw new ReliableError("protocol", `undelivered ${from}..${to} names messages never sent`);
          }
          const key = `${from}-${to}`;
          if (this.seenReports.includes(key)) return;
          this.seenReports.push(key);
          if (this.seenReports.length > SEEN_REPORTS) this.seenReports.shift();
          const messages = this.unsettled.filter((u) => u.seq >= from && u.seq <= to)
            .map((u) => ({ seq: u.seq, data: dataOf(u.payload) }));
          this.unsettled = this.unsettled.filter((u) => u.seq < from || u.seq > to);
          if (this.options.onUndelivered) this.options.onUndelivered({ from, to }, messages);
          return;
        }
        case "data": {
          if (!isSeq(seq) || seq < 1) throw new ReliableError("protocol", "data without a valid seq");
          if (seq <= this.delivered) return; // a resend of what was already handed over
          if (seq !== this.delivered + 1) {
            throw new ReliableError("protocol", `terminal message ${seq} skips ahead of ${this.delivered}`);
          }
          if (typeof m.text !== "string" && typeof m.binary !== "string") {
            throw new ReliableError("protocol", "data without text or binary");
          }
          this.delivered = seq;
          const data = typeof m.text === "string" ? m.text : fromBase64(m.binary);
          const result = this.options.onMessage ? this.options.onMessage(seq, data) : undefined;
          if (this.options.manualAck) return;
          if ((result && typeof result.then === "function") || this.handling) {
            // Acks are cumulative: acknowledge in order, each once its handler is done.
            const previous = this.handling || Promise.resolve();
            const mine = previous.then(() => result).then(() => {
              this.processed(seq);
              if (this.handling === mine) this.handling = null;
            }, (err) => {
              if (this.handling === mine) this.handling = null;
              this.fail(new ReliableError("handler", `onMessage failed for ${seq}: ${err && err.message}`));
              this.close();
            });
            this.handling = mine;
          } else {
            this.processed(seq);
          }
          return;
        }
        case "resume_failed": {
          const err = new ReliableError("resume_failed", `the relay cannot resume this session: ${m.reason}`, { reason: m.reason });
          this.fail(err);
          return;
        }
        default:
          throw new ReliableError("protocol", `unexpected envelope type ${JSON.stringify(m.type)}`);
      }
    }
  }

  PosrelayReliable.ReliableError = ReliableError;
  return { PosrelayReliable, ReliableError, SUBPROTOCOL };
});
