import { join } from 'node:path';
import { LaunchError, type Machine } from '../qemu/machine.js';
import { useMachines, type MachineFixture } from '../testing/fixtures.js';
import type { IommufdModel, KernelRecord } from '../trace/model.js';
import { probeArch } from '../viommu/probe.js';
import { LabHost } from './lab-host.js';
import { formatsFor, iommufdModel, iommufdModelOf, l2Description, type L2Spec } from './l2.js';
import { withHugepageRam } from './virtual-lab.js';

/** What a launch of L2 left behind: the model of its trace, and the machine or the launch error. */
export interface L2Outcome {
  model: IommufdModel;
  machine?: Machine;
  error?: LaunchError;
}

/**
 * The lab suites' fixture: the host opened once for the describe block (its
 * devices bound, kprobes set; a skip with the reason where there is no lab
 * host), the kprobe buffer cleared before each test, and L2 machines owned by
 * the test that launches them.
 */
export class LabFixture {
  private opened: LabHost | undefined;
  constructor(readonly machines: MachineFixture) {}

  get host(): LabHost {
    if (!this.opened) throw new Error('useLabHost(): the lab host is not open (used outside a test?)');
    return this.opened;
  }

  async open(ctx: Mocha.Context): Promise<void> {
    this.opened = await LabHost.open(ctx);
  }

  close(): void {
    this.opened?.close();
    this.opened = undefined;
  }

  /** The kernel's answers recorded since the test began. */
  kernel(): KernelRecord[] {
    return this.opened?.kprobes?.collect() ?? [];
  }

  async launchL2(spec: L2Spec, name = 'l2'): Promise<Machine> {
    // L2's RAM on 2 MiB pages where the host has them free: the IOMMU then maps
    // 2 MiB at a time (in the virtual lab, one vfio-user DMA_MAP instead of 512).
    const { desc } = withHugepageRam(l2Description(spec, await probeArch(spec.config.arch)));
    if (spec.config.requires?.includes('kvm')) desc.accel = 'kvm';
    return this.machines.launch(desc, { name });
  }

  /** Launches L2; a failed launch is an outcome too, modelled from the trace it left. */
  async launch(spec: L2Spec): Promise<L2Outcome> {
    try {
      const machine = await this.launchL2(spec);
      return { model: await iommufdModel(machine, this.kernel()), machine };
    } catch (e) {
      if (!(e instanceof LaunchError)) throw e;
      const formats = await formatsFor((await probeArch(spec.config.arch)).binary.traceEventsAll);
      return { model: await iommufdModelOf(join(e.artifactsDir, 'trace.log'), formats, this.kernel()), error: e };
    }
  }

  /** The model of a running L2's trace so far, with the kernel's answers. */
  model(machine: Machine): Promise<IommufdModel> {
    return iommufdModel(machine, this.kernel());
  }
}

export function useLabHost(): LabFixture {
  const lab = new LabFixture(useMachines());
  before(async function () {
    this.timeout(120_000);
    await lab.open(this);
  });
  after(() => lab.close());
  beforeEach(() => lab.host.kprobes?.clear());
  return lab;
}
