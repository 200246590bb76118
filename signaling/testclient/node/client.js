// A minimal rendezvous signaling client in Node, written from docs/signaling.md
// alone. The Go test TestNodeClientInterop runs it:
//
//   node client.js <ws-url> <join-code> [token]
//
// It registers, joins the room by its join code, prints every event as one JSON
// line on stdout, and when it receives a signal it answers the sender with a
// signal {"echo": <payload>, "from": "node"}, then leaves and exits 0.
'use strict';

const WebSocket = require('ws');

const [url, code, token] = process.argv.slice(2);
if (!url || !code) {
  console.error('usage: node client.js <ws-url> <join-code> [token]');
  process.exit(2);
}

const headers = token ? { Authorization: `Bearer ${token}` } : {};
const ws = new WebSocket(url, { headers });
let nextRid = 1;
const pending = new Map(); // rid -> {resolve, reject}

function log(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

function send(type, data, rid) {
  const frame = { type, data };
  if (rid) frame.rid = rid;
  ws.send(JSON.stringify(frame));
}

// request sends a frame with a fresh rid and resolves with the reply's data,
// or rejects with the error frame's {code, message}.
function request(type, data) {
  const rid = nextRid++;
  return new Promise((resolve, reject) => {
    pending.set(rid, { resolve, reject });
    send(type, data, rid);
  });
}

let me = null;
let room = null;

ws.on('message', async (raw) => {
  let frame;
  try { frame = JSON.parse(raw.toString()); } catch (e) { log({ event: 'bad_frame', raw: raw.toString() }); return; }
  const { type, rid, data } = frame;
  if (type === 'ping') { send('pong', { seq: data.seq }); return; } // heartbeat: answer every ping
  if (rid && pending.has(rid)) {
    const p = pending.get(rid);
    pending.delete(rid);
    if (type === 'error') p.reject(data); else p.resolve(data);
    return;
  }
  log({ event: type, data });
  if (type === 'signal') {
    // Use the room id carried by the signal: several frames can arrive in one
    // read, so this event may run before the join promise has resolved.
    await request('signal', { to: data.from, room_id: data.room_id, payload: { echo: data.payload, from: 'node' } });
    await request('leave', { room_id: data.room_id });
    log({ event: 'done' });
    ws.close(1000, 'bye');
  }
});

ws.on('open', async () => {
  try {
    me = await request('register', {
      protocol: 1,
      name: 'node-peer',
      public_key: 'bm9kZS1wdWJsaWMta2V5',
      candidates: [{ type: 'host', addr: '127.0.0.1:41000' }],
      nat: { type: 'unknown' },
    });
    log({ event: 'registered', peer_id: me.peer_id, protocol: me.protocol, limits: me.limits });
    const joined = await request('join', { code });
    room = joined.room;
    log({ event: 'room_joined', room_id: room.id, members: joined.members.map((m) => ({ id: m.id, name: m.name, public_key: m.public_key })) });
  } catch (err) {
    log({ event: 'error', error: err });
    process.exit(1);
  }
});

ws.on('close', (codeNum, reason) => { process.exit(codeNum === 1000 ? 0 : 1); });
ws.on('error', (err) => { console.error(String(err)); process.exit(1); });
setTimeout(() => { console.error('timeout'); process.exit(3); }, 20000).unref();
