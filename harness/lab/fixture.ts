import { expect } from 'chai';
import { join } from 'node:path';
import { bootGuest, type BootedGuest } from '../guest/boot.js';
import { findGuestImage } from '../guest/image.js';
import { LaunchError, type Machine } from '../qemu/machine.js';
import { skipBecause } from '../report/skip.js';
import { ERRNO_TEXT, errnoValue, formatHwptFlags } from '../trace/flags.js';
import { DIRECT_TASK } from '../host/kernel-answers.js';
import { useMachines, type MachineFixture } from '../testing/fixtures.js';
import type { HwptAlloc, IommufdModel, KernelRecord } from '../trace/model.js';
import type { ViommuConfig } from '../viommu/configs.js';
import { LabHost } from './lab-host.js';
import { formatsFor, iommufdModel, iommufdModelOf, l2Description, probeL2, type L2Spec } from './l2.js';
import { withHugepageRam } from './virtual-lab.js';

/** What a launch of L2 left behind: the model of its trace, and the machine or the launch error. */
export interface L2Outcome {
  model: IommufdModel;
  machine?: Machine;
  error?: LaunchError;
}

/**
 * The kernel's answers to QEMU alone: kprobes also record the harness's own
 * direct questions (task iommufd-probe, DIRECT_TASK), and one with the same
 * flags, dev_id and pt_id as QEMU's request would otherwise be joined to it.
 */
export function qemuKernelRecords(records: readonly KernelRecord[]): KernelRecord[] {
  return records.filter((k) => !String(k.fields.task ?? '').startsWith(DIRECT_TASK));
}

/** The kernel's answer to a request asked directly (iommufd-probe), as LabHost.kernelAnswer gives it. */
export interface DirectAnswer {
  ok: boolean;
  errno?: string;
}

/** errno name → glibc's strerror(3) text, which QEMU quotes in its errors. */
const STRERROR: Readonly<Record<string, string>> = Object.fromEntries(Object.entries(ERRNO_TEXT).map(([text, name]) => [name, text]));

export function describeAnswer(a: DirectAnswer): string {
  return a.ok ? 'accepted' : `refused with ${a.errno ?? 'an unknown errno'}`;
}

/** The platform a config's vIOMMU belongs to, for the host-profile check. */
const platformOf = (c: ViommuConfig): 'vtd' | 'smmuv3' | undefined =>
  c.viommu?.driver === 'intel-iommu' ? 'vtd' : c.viommu?.driver === 'arm-smmuv3' ? 'smmuv3' : undefined;

/**
 * The lab suites' fixture: the host opened once for the describe block
 * (kprobes set; a skip with the reason where there is no lab host), the
 * kprobe buffer cleared before each test, L2 machines owned by the test that
 * launches them, and devices owned by whoever asked for them: a test's are
 * given back when it ends (after its machines stopped), a suite's (asked in
 * its before hook) when that suite ends.
 */
export class LabFixture {
  private opened: LabHost | undefined;
  /** The test running now (from this fixture's beforeEach to its afterEach). */
  private test: Mocha.Runnable | undefined;
  /** Suites that hold devices from a before hook, each with its after hook to give them back. */
  private readonly holdingSuites = new Set<Mocha.Suite>();
  constructor(
    readonly machines: MachineFixture,
    private readonly openHost: typeof LabHost.open = LabHost.open,
  ) {}

  get host(): LabHost {
    if (!this.opened) throw new Error('useLabHost(): the lab host is not open (used outside a test?)');
    return this.opened;
  }

  async open(ctx: Mocha.Context): Promise<void> {
    this.opened = await this.openHost(ctx, (c) => this.scopeOf(c));
  }

  close(): void {
    this.opened?.close();
    this.opened = undefined;
  }

  /** Called by the fixture's beforeEach and afterEach: devices asked in between are the test's. */
  beginTest(test: Mocha.Runnable | undefined): void {
    // A test whose afterEach never ran (a hook before ours failed) gives its devices back now.
    this.endTest();
    this.test = test;
  }

  endTest(): void {
    const test = this.test;
    this.test = undefined;
    if (test) this.opened?.giveBack(test);
  }

  /**
   * A request during a test belongs to the test; one from a before hook to the
   * hook's suite, which gets an after hook of its own (run after the suite's
   * other after hooks, e.g. its machines') that gives the devices back.
   */
  private scopeOf(ctx: Mocha.Context): object {
    if (this.test) return this.test;
    const suite = ctx.test?.parent;
    if (!suite) throw new Error('useLabHost(): a device asked for outside a test or a hook');
    if (!this.holdingSuites.has(suite)) {
      this.holdingSuites.add(suite);
      suite.afterAll('give back the lab devices its before hooks took', () => {
        this.holdingSuites.delete(suite);
        this.opened?.giveBack(suite);
      });
    }
    return suite;
  }

  /** The kernel's answers recorded since the test began. */
  kernel(): KernelRecord[] {
    return qemuKernelRecords(this.opened?.kprobes?.collect() ?? []);
  }

  async launchL2(spec: L2Spec, name = 'l2'): Promise<Machine> {
    // L2's RAM on 2 MiB pages where the host has them free: the IOMMU then maps
    // 2 MiB at a time (in the virtual lab, one vfio-user DMA_MAP instead of 512).
    const probe = await probeL2(spec.config.arch);
    const { desc } = withHugepageRam(l2Description(spec, probe));
    if (spec.config.requires?.includes('kvm')) {
      desc.accel = 'kvm';
      // KVM runs the host's own CPU model (virt's default, cortex-a15, is 32-bit).
      if (desc.arch === 'aarch64') desc.cpu = 'host';
    }
    return this.machines.launch(desc, { name, binary: probe.binary });
  }

  /** Launches L2; a failed launch is an outcome too, modelled from the trace it left. */
  async launch(spec: L2Spec): Promise<L2Outcome> {
    try {
      const machine = await this.launchL2(spec);
      return { model: await iommufdModel(machine, this.kernel()), machine };
    } catch (e) {
      if (!(e instanceof LaunchError)) throw e;
      const formats = await formatsFor((await probeL2(spec.config.arch)).binary.traceEventsAll);
      const model = await iommufdModelOf(join(e.artifactsDir, 'trace.log'), formats, this.kernel());
      // QEMU's own error names the errno and the realize check (the trace has -1 and no text).
      model.addQemuMessages(e.stderr);
      return { model, error: e };
    }
  }

  /**
   * Boots the harness's guest kernel as L2, with `spec`'s vIOMMU and devices, so a test sees
   * from inside what QEMU really emulates (a synthesized PASID capability, a first-stage PASID
   * entry). A skip where the guest image is missing. The deadlines are for an L2 under TCG
   * inside L1's TCG, where QEMU alone takes tens of seconds to come up.
   */
  async bootL2Guest(ctx: Mocha.Context, spec: L2Spec, memoryMB: number): Promise<BootedGuest> {
    const image = findGuestImage(spec.config.arch);
    if (!image.ok) skipBecause(ctx, image.reason);
    const probe = await probeL2(spec.config.arch);
    const desc = l2Description(spec, probe);
    return bootGuest(
      (d) => this.machines.launch(d, { name: 'l2-guest', binary: probe.binary, readyTimeoutMs: 180_000, commandTimeoutMs: 60_000 }),
      {
        image: image.image,
        viommu: false, // the config's own vIOMMU is in desc.devices
        memoryMB,
        devices: desc.devices!,
        globals: desc.globals ?? [],
        objects: desc.objects ?? [],
        trace: desc.trace ?? [],
      },
      { readyTimeoutMs: 480_000 },
    );
  }

  /** The model of a running L2's trace so far, with the kernel's answers. */
  model(machine: Machine): Promise<IommufdModel> {
    return iommufdModel(machine, this.kernel());
  }

  /**
   * Skips unless this host can run `config` as L2: a vIOMMU of the host's
   * own platform (intel-iommu on a VT-d host, arm-smmuv3 on an SMMUv3 host),
   * a machine of the host's architecture, and KVM where the config needs it.
   */
  /** The architecture of the L2s this host runs (an SMMUv3 host's are aarch64). */
  get l2Arch(): 'x86_64' | 'aarch64' {
    return this.host.profile.platform === 'smmuv3' ? 'aarch64' : 'x86_64';
  }

  requireConfig(ctx: Mocha.Context, config: ViommuConfig): void {
    const host = this.host;
    const platform = platformOf(config);
    if (platform && platform !== host.profile.platform) {
      skipBecause(ctx, `${config.name} needs an ${platform} host; host profile ${host.profile.name} is ${host.profile.platform}`);
    }
    const hostArch = this.l2Arch;
    if (config.arch !== hostArch) skipBecause(ctx, `${config.name} is an ${config.arch} machine; this ${host.profile.platform} host runs ${hostArch} L2s`);
    if (config.requires?.includes('kvm')) host.require(ctx, 'kvm');
  }

  /**
   * QEMU acts on the kernel's answer: where the kernel grants the request
   * (asked directly), L2 comes up with the device attached at pasid 0; where
   * it refuses, the launch fails quoting that errno, and nothing is left
   * allocated.
   */
  expectActsOnAnswer(o: L2Outcome, direct: DirectAnswer, bdf: string): void {
    if (direct.ok) {
      expect(o.error, `the kernel accepts the request directly, yet L2 failed: ${o.error?.message}`).to.equal(undefined);
      // At the device's RID: pasid 0, or no pasid field at all (10.0 traces iommufd_cdev_attach_ioas_hwpt without one).
      expect(o.model).to.have.attached({ name: bdf });
      const rid = o.model.attaches.filter((a) => a.name === bdf && (a.pasid ?? 0) === 0);
      expect(rid.length, `an attach of ${bdf} at its RID (pasid 0): ${JSON.stringify(o.model.attaches.map((a) => ({ name: a.name, pasid: a.pasid })))}`).to.be.greaterThan(0);
      return;
    }
    expect(o.error, `the kernel refuses the request directly (${direct.errno}), so the launch must fail`).to.be.instanceOf(LaunchError);
    const why = direct.errno && STRERROR[direct.errno];
    expect(o.error!.stderr).to.include(`vfio ${bdf}: Failed to allocate hwpt${why ? `: ${why}` : ''}`);
    expect(o.model.hwptAllocs.filter((h) => h.devId === o.model.devIdOf(bdf)).every((h) => !h.ok), 'QEMU saw every allocation for the device fail').to.equal(true);
    expect(o.model).to.have.freedEverything();
  }

  /**
   * The kernel's answer to QEMU's request (kprobes) is its answer to the same
   * request asked directly. A skip with the exact reason where this host
   * cannot show the kernel's answers; never a pass without a comparison.
   */
  expectKernelAnswered(ctx: Mocha.Context, req: HwptAlloc | undefined, direct: DirectAnswer): void {
    this.host.requireKernelAnswers(ctx);
    expect(req, 'QEMU made an HWPT request for the device').to.not.equal(undefined);
    expect(
      req!.kernel,
      `no kernel answer joined to QEMU's request flags=${formatHwptFlags(req!.flags)} dev_id=${req!.devId} pt_id=${req!.ptId}; kprobe records: ${JSON.stringify(this.kernel().map((k) => k.fields))}`,
    ).to.not.equal(undefined);
    expect(req!.kernel!.fields.ret, `the kernel's answer to QEMU (kprobe), directly it was ${describeAnswer(direct)}`).to.equal(
      direct.ok ? 0 : errnoValue(direct.errno!),
    );
  }
}

/** The lab fixture for a describe block; `openHost` is for the fixture's own tests (a fake host). */
export function useLabHost(openHost?: typeof LabHost.open): LabFixture {
  const lab = new LabFixture(useMachines(), openHost);
  before(async function () {
    this.timeout(120_000);
    await lab.open(this);
  });
  after(() => lab.close());
  beforeEach(function () {
    lab.beginTest(this.currentTest);
    lab.host.kprobes?.clear();
  });
  // Registered after useMachines' afterEach, so the test's L2s have stopped (and closed the devices) first.
  afterEach(() => lab.endTest());
  return lab;
}
