import type { DeviceSpec, MachineDescription, PropValue } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { Agent } from './agent.js';
import { Console } from './console.js';
import type { GuestImage } from './image.js';

/** The virtserialport name init looks for (images/init/init, harness.agent=). */
export const AGENT_PORT_NAME = 'org.harness.agent';
/** Chardev ids the Machine listens on. */
export const AGENT_CHARDEV = 'agent';
export const SERIAL_CHARDEV = 'serial0';

/**
 * The intel-iommu of the guest-side tests: scalable mode with 20 PASID bits,
 * device IOTLB, interrupt remapping and caching mode (as for device
 * assignment). Property names are QEMU 11.1's (see the facts sheet, section 1).
 */
export const DEFAULT_INTEL_IOMMU: Record<string, PropValue> = {
  intremap: 'on',
  'scalable-mode': true,
  'pasid-bits': 20,
  'device-iotlb': true,
  'caching-mode': true,
};

export interface GuestOptions {
  image: GuestImage;
  /** intel-iommu properties, or false for no vIOMMU. Default DEFAULT_INTEL_IOMMU. */
  intelIommu?: Record<string, PropValue> | false;
  accel?: 'tcg' | 'kvm';
  cpu?: string;
  smp?: number;
  memoryMB?: number;
  /** Extra kernel command-line words (after the harness's own). */
  append?: string[];
  /** Devices after the vIOMMU and the agent's virtio-serial. */
  devices?: DeviceSpec[];
  globals?: MachineDescription['globals'];
  objects?: MachineDescription['objects'];
  trace?: string[];
  extraArgs?: string[];
  /** Print less while booting (loglevel=4): less console I/O under TCG. */
  quiet?: boolean;
  /**
   * Boot into a read-only 9p share of a host folder (default the host's /)
   * instead of staying in the initramfs: harness.root=9p, tmpfs on /tmp,
   * /run, /var/tmp and /dev/shm. The virtual lab's L1 runs Node and QEMU
   * from there.
   */
  rootShare?: { hostPath?: string };
  /**
   * A writable 9p share of `hostPath`, mounted at `guestPath` (in the 9p root
   * this must be a folder that exists there, e.g. the same path as on the host).
   */
  resultsShare?: { hostPath: string; guestPath: string };
  /**
   * Further read-only 9p shares mounted in the 9p root (harness.share=): host
   * folders the guest would not see otherwise, e.g. a checkout under /tmp,
   * which the guest covers with tmpfs. Needs rootShare.
   */
  extraShares?: Array<{ tag: string; hostPath: string; guestPath: string }>;
}

export const ROOT_SHARE_TAG = 'hostroot';
export const RESULTS_SHARE_TAG = 'results';

/** -fsdev for a 9p export; multidevs=remap because / spans several file systems. */
function fsdev(id: string, path: string, readonly: boolean): string[] {
  const p = path.replaceAll(',', ',,');
  return ['-fsdev', `local,id=${id},path=${p},security_model=none,multidevs=remap${readonly ? ',readonly=on' : ''}`];
}

/** The kernel command line for an agent guest. */
export function guestCmdline(opts: Pick<GuestOptions, 'append' | 'quiet' | 'rootShare' | 'resultsShare' | 'extraShares'> = {}): string {
  if (opts.extraShares?.length && !opts.rootShare) throw new Error('extraShares are mounted in the 9p root: they need rootShare');
  const paths: Array<[string, string | undefined]> = [
    ['resultsShare.guestPath', opts.resultsShare?.guestPath],
    ...(opts.extraShares ?? []).map((x, i): [string, string] => [`extraShares[${i}].guestPath`, x.guestPath]),
  ];
  for (const [what, v] of paths) {
    if (v !== undefined && !/^\/[\w./-]*$/.test(v)) throw new Error(`${what} must be an absolute path without spaces, got ${JSON.stringify(v)}`);
  }
  return [
    'console=ttyS0,115200',
    // A panic ends the machine (-no-reboot) instead of hanging until a deadline.
    'panic=-1',
    ...(opts.quiet ? ['loglevel=4'] : []),
    'harness.role=agent',
    `harness.agent=${AGENT_PORT_NAME}`,
    ...(opts.rootShare ? ['harness.root=9p', `harness.roottag=${ROOT_SHARE_TAG}`] : []),
    ...(opts.resultsShare ? [`harness.results=${opts.resultsShare.guestPath}`] : []),
    ...(opts.extraShares ?? []).map((x) => `harness.share=${x.tag}:${x.guestPath}`),
    ...(opts.append ?? []),
  ].join(' ');
}

/** A q35 machine that boots the harness kernel with the agent on a virtio-console port. */
export function guestDescription(opts: GuestOptions): MachineDescription {
  const iommu = opts.intelIommu === false ? undefined : (opts.intelIommu ?? DEFAULT_INTEL_IOMMU);
  const devices: DeviceSpec[] = [
    // intel-iommu must precede the PCI devices it translates.
    ...(iommu ? [{ driver: 'intel-iommu', id: 'iommu0', ...iommu }] : []),
    { driver: 'virtio-serial-pci', id: 'vser0' },
    { driver: 'virtserialport', id: 'agentport', bus: 'vser0.0', chardev: AGENT_CHARDEV, name: AGENT_PORT_NAME },
    // The caller's devices first: they may pin slots (root ports at 0x2.0...);
    // the 9p shares take whatever slots are left.
    ...(opts.devices ?? []),
    ...(opts.rootShare ? [{ driver: 'virtio-9p-pci', id: 'fs-root', fsdev: ROOT_SHARE_TAG, mount_tag: ROOT_SHARE_TAG }] : []),
    ...(opts.resultsShare ? [{ driver: 'virtio-9p-pci', id: 'fs-results', fsdev: RESULTS_SHARE_TAG, mount_tag: RESULTS_SHARE_TAG }] : []),
    ...(opts.extraShares ?? []).map((x) => ({ driver: 'virtio-9p-pci', id: `fs-${x.tag}`, fsdev: x.tag, mount_tag: x.tag })),
  ];
  const shares = [
    ...(opts.rootShare ? fsdev(ROOT_SHARE_TAG, opts.rootShare.hostPath ?? '/', true) : []),
    ...(opts.resultsShare ? fsdev(RESULTS_SHARE_TAG, opts.resultsShare.hostPath, false) : []),
    ...(opts.extraShares ?? []).flatMap((x) => fsdev(x.tag, x.hostPath, true)),
  ];
  return {
    arch: 'x86_64',
    // Interrupt remapping needs the split irqchip under KVM; TCG takes it too.
    machine: { type: 'q35', props: iommu ? { 'kernel-irqchip': 'split' } : {} },
    accel: opts.accel ?? 'tcg',
    cpu: opts.cpu ?? 'max',
    smp: opts.smp ?? 2,
    memoryMB: opts.memoryMB ?? 1024,
    kernel: { path: opts.image.kernel, initrd: opts.image.initrd, append: guestCmdline(opts) },
    serial: true,
    chardevs: [AGENT_CHARDEV],
    devices,
    ...(opts.globals ? { globals: opts.globals } : {}),
    ...(opts.objects ? { objects: opts.objects } : {}),
    ...(opts.trace ? { trace: opts.trace } : {}),
    extraArgs: ['-no-reboot', ...shares, ...(opts.extraArgs ?? [])],
  };
}

export interface BootedGuest {
  machine: Machine;
  console: Console;
  agent: Agent;
  /** Host milliseconds from the start of launch to QMP ready and to the agent's answer. */
  launchMs: number;
  agentReadyMs: number;
  /** The guest's uptime when the agent answered. */
  guestUptimeS: number;
}

export interface BootOptions {
  /** Deadline for the agent's first answer, counted from QMP ready. */
  readyTimeoutMs?: number;
}

/**
 * Attaches the console and the agent to a Machine launched from
 * guestDescription(): for machines a test launches itself.
 */
export function attachGuest(machine: Machine): { console: Console; agent: Agent } {
  const console = new Console(machine.chardev(SERIAL_CHARDEV));
  const agent = new Agent(machine.chardev(AGENT_CHARDEV), () => {
    const tail = console
      .tail(30)
      .split('\n')
      .map((l) => `    | ${l}`)
      .join('\n');
    return `  console tail:\n${tail}\n  full console log: ${console.logPath ?? '(none)'}\n  machine artifacts: ${machine.artifactsDir}`;
  });
  return { console, agent };
}

/**
 * Launches a guest (through `launch`, e.g. a test's MachineFixture or
 * Machine.launch) and waits until its agent answers.
 */
export async function bootGuest(
  launch: (desc: MachineDescription) => Promise<Machine>,
  opts: GuestOptions,
  boot: BootOptions = {},
): Promise<BootedGuest> {
  const t0 = Date.now();
  const machine = await launch(guestDescription(opts));
  const launchMs = Date.now() - t0;
  const { console, agent } = attachGuest(machine);
  const stopped = guestStopped(machine, console);
  try {
    const ready = await Promise.race([agent.ready(boot.readyTimeoutMs ?? 60_000), stopped.promise]);
    return { machine, console, agent, launchMs, agentReadyMs: Date.now() - t0, guestUptimeS: ready.uptimeS };
  } finally {
    stopped.cancel();
  }
}

/** The guest can no longer run: it panicked, or the accelerator gave up (KVM internal error). */
export class GuestStoppedError extends Error {
  override name = 'GuestStoppedError';
}

/**
 * Rejects when the VM stops for good while booting: a KVM internal error or a
 * guest panic leaves QEMU running but the vCPUs stopped, so without this a
 * boot would only fail at its deadline. (A panic with -no-reboot ends QEMU,
 * which the agent sees as a closed port.)
 */
function guestStopped(machine: Machine, console: Console): { promise: Promise<never>; cancel(): void } {
  const events = machine.qmp.listen({ names: ['STOP', 'GUEST_PANICKED'] });
  let cancelled = false;
  const promise = (async (): Promise<never> => {
    for (;;) {
      const e = await events.next(24 * 3600 * 1000);
      if (cancelled) break;
      const status = e.event === 'GUEST_PANICKED' ? 'guest-panicked' : (await machine.qmp.queryStatus()).status;
      if (['internal-error', 'guest-panicked', 'shutdown', 'io-error'].includes(status)) {
        const tail = console
          .tail(20)
          .split('\n')
          .map((l) => `    | ${l}`)
          .join('\n');
        throw new GuestStoppedError(
          `the guest stopped while booting (VM status ${status}, event ${e.event})\n  QEMU stderr:\n${machine
            .stderrTail(12)
            .split('\n')
            .map((l) => `    ${l}`)
            .join('\n')}\n  console tail:\n${tail}\n  artifacts: ${machine.artifactsDir}`,
        );
      }
    }
    return new Promise<never>(() => {});
  })();
  promise.catch(() => {});
  return {
    promise,
    cancel: () => {
      cancelled = true;
      events.close();
    },
  };
}
