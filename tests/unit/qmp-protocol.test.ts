import { expect } from 'chai';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../harness/qmp/client.js';
import { UnixListener } from '../../harness/qmp/transport.js';
import { QmpDisconnectedError, QmpMessageTooLargeError, QmpNegotiationError, QmpProtocolError } from '../../harness/qmp/errors.js';
import { DeadlineError } from '../../harness/util/deadline.js';

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 11}, "package": ""}, "capabilities": ["oob"]}}\r\n';

/** A fake QMP peer on a unix socket; `onConnect` plays the peer. Its sockets are kept to be destroyed. */
async function fakePeer(onConnect: (s: Socket) => void, sockets: Socket[]): Promise<{ path: string; server: Server }> {
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-fake-')), 'qmp.sock');
  const server = createServer((s) => {
    sockets.push(s);
    onConnect(s);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server };
}

/** Greets, accepts capabilities, then hands each later command to `onCommand`. */
function negotiating(onCommand: (s: Socket, msg: { execute: string; id: string }) => void) {
  return (s: Socket) => {
    s.write(GREETING);
    let buf = '';
    s.on('data', (d) => {
      buf += String(d);
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (msg.execute === 'qmp_capabilities') s.write(JSON.stringify({ return: {}, id: msg.id }) + '\n');
        else onCommand(s, msg);
      }
    });
  };
}

describe('QMP protocol against misbehaving peers', () => {
  // Nothing may outlive a test: a server with a live connection keeps mocha from exiting.
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  const clients: QmpClient[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => {})));
    sockets.splice(0).forEach((s) => s.destroy());
    servers.splice(0).forEach((s) => s.close());
  });
  const connect = async (path: string): Promise<QmpClient> => {
    const c = await QmpClient.connectUnix(path);
    clients.push(c);
    return c;
  };
  const peer = async (f: (s: Socket) => void) => {
    const p = await fakePeer(f, sockets);
    servers.push(p.server);
    return p.path;
  };

  it('a socket that never answers: a deadline naming the greeting', async () => {
    const path = await peer(() => {});
    const err = await QmpClient.connectUnix(path, { greetingTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DeadlineError);
    expect(String(err)).to.match(/QMP greeting from unix:.*qmp\.sock: no answer within 200 ms/);
  });

  it('malformed JSON from the peer: a protocol error quoting it', async () => {
    const path = await peer((s) => s.write('{"QMP": {nope}}\n'));
    const err = await QmpClient.connectUnix(path, { greetingTimeoutMs: 2000 }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpProtocolError);
    expect(String(err)).to.include('malformed JSON').and.include('{nope}');
  });

  it('a refused qmp_capabilities: a negotiation error', async () => {
    const path = await peer((s) => {
      s.write(GREETING);
      s.on('data', (d) => {
        const { id } = JSON.parse(String(d));
        s.write(JSON.stringify({ error: { class: 'GenericError', desc: 'Capabilities negotiation is already complete' }, id }) + '\n');
      });
    });
    const err = await QmpClient.connectUnix(path, { greetingTimeoutMs: 2000 }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpNegotiationError);
    expect(String(err)).to.include('Capabilities negotiation is already complete');
  });

  it('a reply with an id nobody sent rejects everything pending as a protocol error', async () => {
    const path = await peer(negotiating((s) => s.write('{"return": {}, "id": "not-ours"}\n')));
    const c = await connect(path);
    const errs = await Promise.all([c.queryStatus(), c.execute('query-name')].map((p) => p.catch((e: unknown) => e)));
    for (const e of errs) expect(e).to.be.instanceOf(QmpProtocolError).and.have.property('message').that.includes('unknown id "not-ours"');
  });

  it('a peer that hangs up mid-command rejects it as disconnected', async () => {
    const path = await peer(negotiating((s) => s.destroy()));
    const c = await connect(path);
    const err = await c.queryStatus().catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpDisconnectedError);
    expect(String(err)).to.match(/lost/);
    // and nothing more can be sent
    expect(await c.queryStatus().catch((e: unknown) => e)).to.be.instanceOf(QmpDisconnectedError);
  });

  const openFds = (): number => readdirSync('/proc/self/fd').length;

  // Before: close() returned at once once the connection had failed, so the
  // socket of every such connection stayed open (500 of them: 22 -> 1022 fds).
  for (const [what, answer] of [
    ['a reply with an unknown id', '{"return": {}, "id": "zz"}'],
    ['a message with neither event nor id', '{"foo": 1}'],
    ['an event whose name is a number', '{"event": 5, "timestamp": {"seconds": 1, "microseconds": 2}}'],
  ] as const) {
    it(`close() releases the socket after ${what}`, async () => {
      const path = await peer(negotiating((s) => s.write(answer + '\n')));
      const before = openFds();
      for (let i = 0; i < 50; i++) {
        const c = await QmpClient.connectUnix(path);
        expect(await c.queryStatus().catch((e: unknown) => e)).to.be.instanceOf(QmpProtocolError);
        await c.close();
      }
      sockets.splice(0).forEach((s) => s.destroy());
      expect(openFds(), `fds before ${before}`).to.equal(before);
    });
  }

  // Each line breaks QMP's grammar; before, the first two were delivered
  // (an event named "5", a command error of class 5) and the third resolved.
  for (const [what, answer, named] of [
    ['a non-string event name', '{"event": 5}', '"event" is 5, not a string'],
    ['a non-string error class', '{"error": {"class": 5, "desc": "x"}, "id": "h2"}', '"error.class" is 5, not a string'],
    ['a non-string error desc', '{"error": {"class": "GenericError", "desc": []}, "id": "h2"}', '"error.desc" is [], not a string'],
    ['return and error together', '{"return": {}, "error": {"class": "GenericError", "desc": "x"}, "id": "h2"}', 'both "return" and "error"'],
    ['an event with a return', '{"event": "STOP", "return": {}, "id": "h2"}', 'both "return" and "event"'],
    ['event data that is not an object', '{"event": "STOP", "data": [1]}', '"data" of STOP is [1], not an object'],
    ['a malformed timestamp', '{"event": "STOP", "timestamp": {"seconds": "1"}}', '"timestamp" of STOP'],
    ['a second greeting', GREETING.trim(), 'a second QMP greeting'],
  ] as const) {
    it(`${what} is a protocol error naming the member`, async () => {
      const path = await peer(negotiating((s) => s.write(answer + '\n')));
      const c = await connect(path);
      const events = c.listen();
      const err = await c.queryStatus().catch((e: unknown) => e);
      expect(err).to.be.instanceOf(QmpProtocolError);
      expect((err as Error).message).to.include(named);
      expect(events.pending, 'nothing is delivered as an event').to.have.length(0);
      expect(c.conn.isOpen).to.equal(false);
    });
  }

  it('a message over the size limit rejects what is pending with its size, before it ends', async () => {
    // 4 MiB of a string that never closes: refused once 1 MiB is passed.
    const path = await peer(negotiating((s) => s.write(`{"return": "${'x'.repeat(4 << 20)}`)));
    const c = await QmpClient.connectUnix(path, { maxMessageBytes: 1 << 20 });
    clients.push(c);
    const err = await c.queryStatus().catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpMessageTooLargeError);
    expect(err).to.be.instanceOf(QmpProtocolError);
    expect(err).to.include({ limit: 1 << 20, incomplete: true });
    expect((err as QmpMessageTooLargeError).size).to.be.above(1 << 20);
    expect((err as Error).message).to.match(/QMP message of at least \d+ bytes exceeds the limit of 1048576 bytes/);
  });

  it('a listener nobody reads keeps at most maxQueuedEvents and a failed wait says how many it dropped', async () => {
    const burst = Array.from({ length: 250 }, (_, i) => `{"event": "E${i}", "timestamp": {"seconds": ${i}, "microseconds": 0}}`).join('\n');
    const path = await peer(negotiating((s) => s.write(burst + '\n{"return": {}, "id": "h2"}\n')));
    const c = await QmpClient.connectUnix(path, { maxQueuedEvents: 100 });
    clients.push(c);
    const all = c.listen();
    const none = c.listen({ names: ['NEVER'] });
    const few = c.listen({}, 3);
    await c.queryStatus();
    expect([few.pending.map((e) => e.event), few.dropped], 'a listener with its own bound').to.deep.equal([['E247', 'E248', 'E249'], 247]);
    expect(all.pending).to.have.length(100);
    expect(all.dropped).to.equal(150);
    expect(all.pending[0]!.event, 'the oldest go first').to.equal('E150');
    expect(none.dropped, 'events the filter refuses are not counted').to.equal(0);
    const err = await c.listen({ names: ['E1'] }).next(50).catch((e: unknown) => e);
    expect(String(err)).to.not.include('dropped');
    for (let i = 0; i < 100; i++) await all.next(10);
    const late = await all.next(50).catch((e: unknown) => e);
    expect(late).to.be.instanceOf(DeadlineError);
    expect(String(late)).to.include('this listener dropped 150 event(s), oldest first: more than 100 were left unread');
  });

  // Before: bind made the socket with the process umask (0777 under umask 0) and a chmod followed.
  it('a UnixListener socket is 0600 from its creation whatever the umask, and only in a private directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qmp-listen-'));
    const old = process.umask(0);
    try {
      const l = await UnixListener.create(join(dir, 'q.sock'));
      expect(statSync(l.path).mode & 0o777).to.equal(0o600);
      await l.close();
    } finally {
      process.umask(old);
    }
    mkdirSync(join(dir, 'open'));
    chmodSync(join(dir, 'open'), 0o755);
    const err = await UnixListener.create(join(dir, 'open', 'q.sock')).catch((e: Error) => e);
    expect(String(err)).to.include(`QMP listener: socket directory ${join(dir, 'open')} has mode 0755`);
  });
});

