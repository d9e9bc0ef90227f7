// Tests of core/src/io/server/demo/posrelay-reliable.js (PROTOCOL.md §11), run with
// `node --test core/tests/js/posrelay-reliable.test.js` (Node 18+, no dependencies). The relay is played by the test
// through a fake WebSocket with the browser API; timers are run by hand.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { PosrelayReliable, SUBPROTOCOL } = require("../../src/io/server/demo/posrelay-reliable.js");

class FakeSocket {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.protocol = "";
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code) {
    this.closedWith = code;
  }
  // The relay's side.
  accept(protocol = SUBPROTOCOL) {
    this.protocol = protocol;
    this.onopen({});
  }
  deliver(envelope) {
    this.onmessage({ data: typeof envelope === "string" ? envelope : JSON.stringify(envelope) });
  }
  drop(code = 1006, reason = "") {
    this.onclose({ code, reason });
  }
  take() {
    const sent = this.sent;
    this.sent = [];
    return sent;
  }
}

function setup(options = {}) {
  FakeSocket.all = [];
  const timers = [];
  const seen = { messages: [], acks: [], undelivered: [], resumed: [], errors: [] };
  const pos = new PosrelayReliable({
    url: "ws://relay/cloud-connector/v1/session/s1",
    protocols: ["bearer.tok"],
    WebSocket: FakeSocket,
    setTimeout: (fn, ms) => timers.push({ fn, ms }),
    onMessage: (seq, data) => { seen.messages.push([seq, data]); },
    onAck: (seq) => seen.acks.push(seq),
    onUndelivered: (range, messages) => seen.undelivered.push([range, messages]),
    onResumed: (r) => seen.resumed.push(r),
    onError: (e) => seen.errors.push(e),
    ...options,
  });
  const socket = () => FakeSocket.all[FakeSocket.all.length - 1];
  const runTimers = () => { while (timers.length) timers.shift().fn(); };
  return { pos, seen, socket, timers, runTimers };
}

function connected(options) {
  const t = setup(options);
  t.pos.connect();
  t.socket().accept();
  assert.deepEqual(t.socket().take(), [{ type: "resume", seq: 0 }]);
  t.socket().deliver({ type: "resumed", seq: 0 });
  return t;
}

test("offers the subprotocol first, resumes with 0, and sends data only after resumed", () => {
  const { pos, socket, seen } = setup();
  pos.connect();
  assert.deepEqual(socket().protocols, [SUBPROTOCOL, "bearer.tok"]);
  assert.equal(pos.send("<TRANSACTION/>"), 1);
  socket().accept();
  assert.deepEqual(socket().take(), [{ type: "resume", seq: 0 }], "nothing before the resume is answered");
  socket().deliver({ type: "resumed", seq: 0 });
  assert.deepEqual(socket().take(), [{ type: "data", seq: 1, text: "<TRANSACTION/>" }]);
  assert.deepEqual(seen.resumed, [{ relaySafe: 0, resent: 1 }]);
  assert.equal(pos.send("two"), 2);
  assert.deepEqual(socket().take(), [{ type: "data", seq: 2, text: "two" }]);
  socket().deliver({ type: "ack", seq: 2 });
  assert.deepEqual(seen.acks, [2]);
  assert.equal(pos.state.unsettled.length, 0);
});

test("hands each terminal message over once and acks it after the handler", () => {
  const { socket, seen } = connected();
  socket().deliver({ type: "data", seq: 1, text: "<RESPONSE/>" });
  socket().deliver({ type: "data", seq: 1, text: "<RESPONSE/>" });
  socket().deliver({ type: "data", seq: 2, text: "é\n\"" });
  assert.deepEqual(seen.messages, [[1, "<RESPONSE/>"], [2, "é\n\""]]);
  assert.deepEqual(socket().take(), [{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }]);
});

test("async handlers are acknowledged in order, each once it is done", async () => {
  const done = [];
  const { socket } = connected({
    onMessage: (seq) => new Promise((resolve) => done.push({ seq, resolve })),
  });
  socket().deliver({ type: "data", seq: 1, text: "a" });
  socket().deliver({ type: "data", seq: 2, text: "b" });
  done[1].resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(socket().take(), [], "2 is done, 1 is not: no ack may cover 1 yet");
  done[0].resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(socket().take(), [{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }]);
});

test("after a break it reconnects, resumes with what it processed and resends what was not safe", () => {
  const { pos, socket, seen, timers, runTimers } = connected({ manualAck: true });
  pos.send("a");
  pos.send("b");
  pos.send("c");
  socket().take();
  socket().deliver({ type: "ack", seq: 1 });
  socket().deliver({ type: "data", seq: 1, text: "r1" });
  socket().deliver({ type: "data", seq: 2, text: "r2" });
  pos.processed(1);
  socket().drop(1006);
  assert.equal(timers.length, 1, "a reconnect is scheduled");
  assert.ok(timers[0].ms >= 100 && timers[0].ms <= 200, `first delay ${timers[0].ms}`);
  pos.send("d"); // while broken: waits for the resume
  runTimers();
  socket().accept();
  assert.deepEqual(socket().take(), [{ type: "resume", seq: 1 }]);
  socket().deliver({ type: "resumed", seq: 2 });
  assert.deepEqual(socket().take(), [
    { type: "data", seq: 3, text: "c" },
    { type: "data", seq: 4, text: "d" },
  ]);
  // The relay sends 2 again (not processed): not handed over twice.
  socket().deliver({ type: "data", seq: 2, text: "r2" });
  socket().deliver({ type: "data", seq: 3, text: "r3" });
  assert.deepEqual(seen.messages.map((m) => m[0]), [1, 2, 3]);
  pos.processed(3);
  assert.deepEqual(socket().take(), [{ type: "ack", seq: 3 }]);
  assert.deepEqual(seen.acks, [1, 2]);
  // Relay shutting down (1001): reconnect too.
  socket().drop(1001);
  runTimers();
  socket().accept();
  assert.deepEqual(socket().take(), [{ type: "resume", seq: 3 }]);
  assert.equal(seen.errors.length, 0);
});

test("a report hands back the messages once, and comes before the ack that covers it", () => {
  const { pos, socket, seen } = connected();
  pos.send("a");
  pos.send(new Uint8Array([1, 2, 3]));
  pos.send("c");
  socket().deliver({ type: "undelivered", from_seq: 2, to_seq: 3 });
  socket().deliver({ type: "undelivered", from_seq: 2, to_seq: 3 });
  socket().deliver({ type: "ack", seq: 3 });
  assert.equal(seen.undelivered.length, 1);
  const [range, messages] = seen.undelivered[0];
  assert.deepEqual(range, { from: 2, to: 3 });
  assert.deepEqual(messages.map((m) => m.seq), [2, 3]);
  assert.deepEqual([...messages[0].data], [1, 2, 3]);
  assert.equal(messages[1].data, "c");
  assert.deepEqual(seen.acks, [3]);
  assert.equal(pos.state.unsettled.length, 0);
});

test("binary payloads travel as base64, both ways, verbatim", () => {
  const { pos, socket, seen } = connected();
  const bytes = new Uint8Array(70000).map((_, i) => (i * 7) & 0xff);
  pos.send(bytes.buffer);
  const [sent] = socket().take();
  assert.equal(sent.type, "data");
  assert.deepEqual([...Buffer.from(sent.binary, "base64")], [...bytes]);
  socket().deliver({ type: "data", seq: 1, binary: "AAEC/w==" });
  assert.ok(seen.messages[0][1] instanceof Uint8Array);
  assert.deepEqual([...seen.messages[0][1]], [0, 1, 2, 255]);
});

test("resume_failed ends the session and reset() starts over", () => {
  const { pos, socket, seen, timers } = connected();
  pos.send("a");
  socket().drop(1006);
  timers.shift().fn();
  socket().accept();
  socket().deliver({ type: "resume_failed", reason: "the claim ended: this is a new claim, resume with seq 0" });
  socket().drop(4409);
  assert.equal(timers.length, 0, "no reconnect after 4409");
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].kind, "resume_failed");
  assert.match(seen.errors[0].reason, /new claim/);
  assert.deepEqual(pos.reset(), [{ seq: 1, data: "a" }]);
  pos.connect();
  socket().accept();
  assert.deepEqual(socket().take(), [{ type: "resume", seq: 0 }]);
});

test("a relay that breaks the rules is refused with 1002", () => {
  const cases = [
    { type: "data", seq: 2, text: "skips 1" },
    { type: "ack", seq: 5 },
    { type: "undelivered", from_seq: 1, to_seq: 9 },
    { type: "resume", seq: 0 },
    "not json",
  ];
  for (const envelope of cases) {
    const { socket, seen, timers } = connected();
    socket().deliver(envelope);
    assert.equal(socket().closedWith, 1002, JSON.stringify(envelope));
    assert.equal(seen.errors[0].kind, "protocol");
    socket().drop(1002);
    assert.equal(timers.length, 0);
  }
});

test("a relay that does not select the subprotocol is refused", () => {
  const { pos, socket, seen } = setup();
  pos.connect();
  socket().accept("posrelay");
  assert.equal(seen.errors[0].kind, "not_selected");
  assert.deepEqual(socket().sent, []);
});

test("other closes end the session: replaced, claim ended, policy", () => {
  for (const code of [4000, 4001, 1008, 1002]) {
    const { socket, seen, timers } = connected();
    socket().drop(code, "why");
    assert.equal(timers.length, 0, `${code}`);
    assert.equal(seen.errors[0].code, code);
  }
});

test("state survives a page reload", () => {
  const { pos, socket } = connected({ manualAck: true });
  pos.send("a");
  pos.send("b");
  socket().deliver({ type: "ack", seq: 1 });
  socket().deliver({ type: "data", seq: 1, text: "r1" });
  socket().deliver({ type: "data", seq: 2, text: "r2" });
  pos.processed(1);
  const saved = JSON.parse(JSON.stringify(pos.state));
  const again = setup({ state: saved });
  again.pos.connect();
  again.socket().accept();
  assert.deepEqual(again.socket().take(), [{ type: "resume", seq: 1 }]);
  again.socket().deliver({ type: "resumed", seq: 1 });
  assert.deepEqual(again.socket().take(), [{ type: "data", seq: 2, text: "b" }]);
  again.socket().deliver({ type: "data", seq: 2, text: "r2" });
  assert.deepEqual(again.seen.messages, [[2, "r2"]], "not processed before the reload: handed over again");
  assert.equal(again.pos.send("c"), 3);
});

test("a new client adopts the relay's numbers; one with its own messages refuses them", () => {
  const fresh = setup();
  fresh.pos.connect();
  fresh.socket().accept();
  fresh.socket().deliver({ type: "resumed", seq: 7 });
  assert.equal(fresh.pos.send("x"), 8);

  const used = setup();
  used.pos.send("mine");
  used.pos.connect();
  used.socket().accept();
  used.socket().deliver({ type: "resumed", seq: 7 });
  assert.equal(used.seen.errors[0].kind, "foreign_state");
  assert.equal(used.socket().closedWith, 1002);
});

test("gives up after the configured attempts", () => {
  const { pos, socket, seen, runTimers } = setup({ reconnect: { initialMs: 10, maxMs: 40, attempts: 2 } });
  pos.connect();
  socket().drop(1006);
  runTimers();
  socket().drop(1006);
  runTimers();
  socket().drop(1006);
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].kind, "gave_up");
  assert.equal(FakeSocket.all.length, 3);
});
