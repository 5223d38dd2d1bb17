import { expect } from 'chai';
import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { VfioUserDevices } from '../../harness/vfio-user/attach.js';
import { VfioUserClient } from '../../harness/vfio-user/client.js';
import { plainEndpoint } from '../../harness/vfio-user/devices/index.js';
import { Command } from '../../harness/vfio-user/protocol.js';

describe('vfio-user devices for a machine', () => {
  it('serves each device on a socket in a private directory that close() removes', async () => {
    const devs = new VfioUserDevices();
    try {
      const a = await devs.add('pasid-endpoint', { id: 'vu0', bus: 'rp0' });
      const b = await devs.add(plainEndpoint, { id: 'vu1', bus: 'rp1' });
      const dir = dirname(a.server.socketPath);
      expect(statSync(dir).mode & 0o777, 'private').to.equal(0o700);
      expect(dirname(b.server.socketPath)).to.equal(dir);
      expect(devs.specs()).to.deep.equal([
        { driver: 'vfio-user-pci', id: 'vu0', bus: 'rp0', socket: { type: 'unix', path: `${dir}/vu0.sock` } },
        { driver: 'vfio-user-pci', id: 'vu1', bus: 'rp1', socket: { type: 'unix', path: `${dir}/vu1.sock` } },
      ]);
      expect(a.server.device.description.name).to.equal('pasid-endpoint');
      const c = await VfioUserClient.connect(devs.get('vu1').server.socketPath);
      const v = Buffer.alloc(4);
      const r = await c.request(Command.VERSION, v);
      expect(r.header.error).to.equal(0);
      expect(r.body.length, 'no version data in reply to none').to.equal(4);
      c.close();
      await devs.close();
      expect(existsSync(dir)).to.equal(false);
    } finally {
      await devs.close();
    }
  });

  it('refuses a bad or repeated id and an unknown device name', async () => {
    const devs = new VfioUserDevices();
    try {
      await devs.add('plain-endpoint', { id: 'vu0', bus: 'rp0' });
      await expectReject(devs.add('plain-endpoint', { id: 'vu0', bus: 'rp1' }), /vfio-user device id vu0 is already in use/);
      await expectReject(devs.add('plain-endpoint', { id: 'a,b', bus: 'rp1' }), /"a,b" is not a valid QEMU id/);
      await expectReject(devs.add('nvme-endpoint', { id: 'vu1', bus: 'rp1' }), /no built-in device description "nvme-endpoint"/);
      expect(() => devs.get('vu9')).to.throw(/no vfio-user device vu9 \(have: vu0\)/);
    } finally {
      await devs.close();
    }
  });
});

async function expectReject(p: Promise<unknown>, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).to.be.instanceOf(Error);
  expect((e as Error).message).to.match(message);
}
