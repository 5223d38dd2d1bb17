import { skipBecause } from '../../harness/report/skip.js';
import { expect } from 'chai';
import { startQmpBridge } from '../../harness/qmp/ws-bridge.js';
import { qmpOverWebsocketTries, TRIES, websocketMonitorArgs, websocketPorts } from '../../harness/repro/qmp-websocket.js';
import type { Machine } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { probeArch } from '../../harness/viommu/probe.js';
import { refusedUpgrade, wsClient } from '../support/ws-client.js';

describe('QMP over WebSocket', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const machines = useMachines();

  describe("the harness's bridge", () => {
    let m: Machine;
    beforeEach(async () => {
      m = await machines.launch({ arch: 'x86_64', machine: { type: 'q35' }, paused: true });
    });

    it('greets, answers under the client’s ids, forwards events and typed errors', async () => {
      const bridge = await startQmpBridge(m.qmp.conn);
      try {
        expect(bridge.url).to.match(/^ws:\/\/127\.0\.0\.1:\d+\/$/);
        const c = await wsClient(`${bridge.url}?token=${bridge.token}`);
        expect(JSON.parse(await c.next())).to.have.nested.property('QMP.version.qemu.major');
        c.send({ execute: 'qmp_capabilities', id: 'c0' });
        expect(JSON.parse(await c.next())).to.deep.equal({ return: {}, id: 'c0' });
        c.send({ execute: 'query-status', id: 'c1' });
        expect(JSON.parse(await c.next())).to.deep.equal({ return: { status: 'prelaunch', running: false }, id: 'c1' });
        c.send({ execute: 'cont', id: 7 });
        const got = [JSON.parse(await c.next()), JSON.parse(await c.next())];
        expect(got).to.deep.include({ return: {}, id: 7 });
        expect(got.find((x) => x.event)).to.have.property('event', 'RESUME');
        c.send({ execute: 'no-such-command', id: 'c2' });
        expect(JSON.parse(await c.next())).to.deep.include({ id: 'c2' }).and.have.nested.property('error.class', 'CommandNotFound');
        c.close();
      } finally {
        await bridge.close();
      }
    });

    it('refuses a client without the token, or with a wrong one', async () => {
      const bridge = await startQmpBridge(m.qmp.conn, { token: 'sesame' });
      try {
        for (const url of [bridge.url, `${bridge.url}?token=open`]) {
          expect(await refusedUpgrade(url)).to.equal(401);
        }
        const ok = await wsClient(bridge.url, { headers: { authorization: 'Bearer sesame' } });
        expect(await ok.next()).to.include('"QMP"');
        ok.close();
      } finally {
        await bridge.close();
      }
    });
  });

  it("QEMU's own websocket chardev: QMP greets but (through 11.1) leaves a command unanswered on some of 5 fresh connections; HMP answers", async function () {
    this.timeout(20_000);
    const { qmpPorts, hmpPort } = await websocketPorts();
    const { features } = await probeArch('x86_64');
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true, extraArgs: websocketMonitorArgs(features, qmpPorts, hmpPort) });
    const v = m.qmp.greeting.version.qemu;
    const { greeting, replies } = await qmpOverWebsocketTries(qmpPorts);
    expect(greeting).to.include('"QMP"');
    // Every answer that does come is the right one: the transport is not garbling frames.
    for (const r of replies.filter((x) => x !== undefined)) expect(JSON.parse(r!)).to.deep.equal({ return: {}, id: 1 });
    const unanswered = replies.filter((r) => r === undefined).length;
    // Through 11.1 the defect is known (facts §10) and it is a race: one connection proves
    // nothing; five fresh ones, any unanswered, show it. A newer QEMU may have fixed it: there
    // this test cannot say what is right, it says what it saw.
    const known = v.major < 11 || (v.major === 11 && v.minor <= 1);
    const h = await wsClient(`ws://127.0.0.1:${hmpPort}/`, {}, 'binary');
    let banner = '';
    while (!banner.includes('(qemu)')) banner += await h.next();
    h.sendBinary('info version\r\n');
    let out = '';
    while (!out.includes(`${v.major}.${v.minor}.${v.micro}`)) out += await h.next();
    h.close();
    // Idle, every known release leaves all five unanswered; under a loaded CI run 10.0.13 and
    // 11.1.3 each once answered all five. A race load decides: not seen is a counted skip.
    if (known && unanswered === 0)
      skipBecause(this, `QEMU ${v.major}.${v.minor}.${v.micro} answered on all ${TRIES} websocket chardevs in this run (HMP answered too): the race did not show, so this run cannot say it is still there`);
    if (!known) {
      skipBecause(
        this,
        `QEMU ${v.major}.${v.minor}.${v.micro} is newer than the releases known to have the websocket QMP defect; ${unanswered} of ${TRIES} connections went unanswered (HMP answered); \`harness repro qmp-websocket-chardev\` judges it`,
      );
    }
  });
});
