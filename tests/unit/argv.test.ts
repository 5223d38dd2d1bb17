import { expect } from 'chai';
import { buildArgv, keyValues, optValue } from '../../harness/qemu/argv.js';

const rt = { qmpSocket: '/tmp/d/qmp.sock', chardevSockets: {} };

describe('machine description → argv', () => {
  it('doubles commas in option values', () => {
    expect(optValue('a,b')).to.equal('a,,b');
    expect(keyValues('q35', { 'kernel-irqchip': 'split', smm: false })).to.equal('q35,kernel-irqchip=split,smm=off');
  });

  it('passes devices and objects as JSON, keeping types', () => {
    const a = buildArgv(
      {
        arch: 'x86_64',
        machine: { type: 'q35' },
        objects: [{ 'qom-type': 'iommufd', id: 'iommufd0' }],
        devices: [{ driver: 'intel-iommu', 'scalable-mode': true, 'pasid-bits': 20 }],
      },
      rt,
    );
    const dev = a[a.indexOf('-device') + 1]!;
    expect(JSON.parse(dev)).to.deep.equal({ driver: 'intel-iommu', 'scalable-mode': true, 'pasid-bits': 20 });
    expect(JSON.parse(a[a.indexOf('-object') + 1]!)).to.deep.equal({ 'qom-type': 'iommufd', id: 'iommufd0' });
  });

  it('has QEMU connect to the harness socket; exit-with-parent only when asked (Machine never does: its helper kills QEMU instead)', () => {
    const a = buildArgv({ arch: 'x86_64', machine: { type: 'none' }, paused: true }, rt);
    expect(a.join(' ')).to.include('-qmp unix:/tmp/d/qmp.sock').and.include('-S');
    expect(a).to.not.include('-serial').and.not.include('-run-with');
    expect(buildArgv({ arch: 'x86_64', machine: { type: 'none' } }, { ...rt, exitWithParent: true }).join(' ')).to.include('-run-with exit-with-parent=on');
  });

  it('routes the serial port and extra chardevs to harness sockets', () => {
    const a = buildArgv(
      { arch: 'x86_64', machine: { type: 'q35' }, serial: true, chardevs: ['agent'] },
      { ...rt, chardevSockets: { serial0: '/tmp/d/serial0.sock', agent: '/tmp/d/agent.sock' } },
    );
    expect(a.join(' ')).to.include('-chardev socket,id=serial0,path=/tmp/d/serial0.sock').and.include('-serial chardev:serial0');
    expect(a.join(' ')).to.include('-chardev socket,id=agent,path=/tmp/d/agent.sock');
  });

  it('uses one -trace option with an events file (a second -trace would reset file=)', () => {
    const a = buildArgv({ arch: 'x86_64', machine: { type: 'q35' }, trace: ['iommufd_*'], timestamps: true }, {
      ...rt,
      traceFile: '/a/trace.log',
      traceEventsFile: '/tmp/d/events',
    });
    expect(a.filter((x) => x === '-trace')).to.have.length(1);
    expect(a[a.indexOf('-trace') + 1]).to.equal('events=/tmp/d/events,file=/a/trace.log');
    expect(a.join(' ')).to.include('-msg timestamp=on');
  });
});
