import { expect } from 'chai';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../harness/qmp/client.js';
import { QmpDisconnectedError, QmpNegotiationError, QmpProtocolError } from '../../harness/qmp/errors.js';
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
});
