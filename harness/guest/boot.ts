import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { DeviceSpec, MachineDescription, PropValue } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { Agent } from './agent.js';
import { Console } from './console.js';
import { withHeartbeat } from '../util/progress.js';
import type { GuestImage } from './image.js';
import { platformOf, X86_64_PLATFORM, type GuestPlatform } from './platform.js';

export { DEFAULT_INTEL_IOMMU, DEFAULT_SMMUV3 } from './platform.js';

/** The virtserialport name init looks for (images/init/init, harness.agent=). */
export const AGENT_PORT_NAME = 'org.harness.agent';
/** Chardev ids the Machine listens on. */
export const AGENT_CHARDEV = 'agent';
export const SERIAL_CHARDEV = 'serial0';

export interface GuestOptions {
  image: GuestImage;
  /**
   * The platform's vIOMMU properties (intel-iommu on x86_64, arm-smmuv3 on
   * aarch64: see harness/guest/platform.ts), or false for no vIOMMU.
   * Default: the platform's (DEFAULT_INTEL_IOMMU, DEFAULT_SMMUV3).
   */
  viommu?: Record<string, PropValue> | false;
  /** The same as `viommu`, for x86_64 guests only (its older name). */
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
   * Boot into a read-only 9p share of a host folder instead of staying in
   * the initramfs: harness.root=9p, tmpfs on /tmp, /run, /var/tmp and
   * /dev/shm. The default folder is the platform's: the host's / for x86_64,
   * the arm64 root (image.root) for aarch64. The virtual lab's L1 runs Node
   * and QEMU from there. In a root other than /, bootGuest() makes the
   * mount points of the other shares that the folder lacks (a read-only
   * root cannot get them in the guest).
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

/** The vIOMMU properties the options ask for, or undefined for none. */
function viommuProps(opts: Pick<GuestOptions, 'viommu' | 'intelIommu'>, platform: GuestPlatform): Record<string, PropValue> | undefined {
  if (opts.viommu !== undefined && opts.intelIommu !== undefined) throw new Error('give the vIOMMU as viommu or as intelIommu, not both');
  if (opts.intelIommu !== undefined && platform.viommu.driver !== 'intel-iommu') {
    throw new Error(`intelIommu is an x86_64 option; this ${platform.arch} guest's vIOMMU is ${platform.viommu.driver} (use viommu)`);
  }
  const props = opts.viommu ?? opts.intelIommu;
  return props === false ? undefined : (props ?? platform.viommu.defaults);
}

/** The host folder the 9p root exports. */
function rootHostPath(opts: Pick<GuestOptions, 'image' | 'rootShare'>, platform: GuestPlatform): string | undefined {
  return opts.rootShare ? (opts.rootShare.hostPath ?? platform.defaultRoot(opts.image)) : undefined;
}

/** The kernel command line for an agent guest (the platform's console; x86_64 by default). */
export function guestCmdline(
  opts: Pick<GuestOptions, 'append' | 'quiet' | 'rootShare' | 'resultsShare' | 'extraShares'> = {},
  platform: GuestPlatform = X86_64_PLATFORM,
): string {
  if (opts.extraShares?.length && !opts.rootShare) throw new Error('extraShares are mounted in the 9p root: they need rootShare');
  const paths: Array<[string, string | undefined]> = [
    ['resultsShare.guestPath', opts.resultsShare?.guestPath],
    ...(opts.extraShares ?? []).map((x, i): [string, string] => [`extraShares[${i}].guestPath`, x.guestPath]),
  ];
  for (const [what, v] of paths) {
    if (v !== undefined && !/^\/[\w./-]*$/.test(v)) throw new Error(`${what} must be an absolute path without spaces, got ${JSON.stringify(v)}`);
  }
  return [
    `console=${platform.console}`,
    // A panic ends the machine (-no-reboot) instead of hanging until a deadline.
    'panic=-1',
    ...platform.append,
    ...(opts.quiet ? ['loglevel=4'] : []),
    'harness.role=agent',
    `harness.agent=${AGENT_PORT_NAME}`,
    ...(opts.rootShare ? ['harness.root=9p', `harness.roottag=${ROOT_SHARE_TAG}`] : []),
    ...(opts.resultsShare ? [`harness.results=${opts.resultsShare.guestPath}`] : []),
    ...(opts.extraShares ?? []).map((x) => `harness.share=${x.tag}:${x.guestPath}`),
    ...(opts.append ?? []),
  ].join(' ');
}

/**
 * A machine of the image's platform (q35 for x86_64, virt with EL2 and UEFI
 * for aarch64) that boots the harness kernel with the agent on a
 * virtio-console port.
 */
export function guestDescription(opts: GuestOptions): MachineDescription {
  const platform = platformOf(opts.image);
  const iommu = viommuProps(opts, platform);
  const devices: DeviceSpec[] = [
    // The vIOMMU must precede the PCI devices it translates.
    ...(iommu ? [{ driver: platform.viommu.driver, id: 'iommu0', ...platform.viommu.placement, ...iommu }] : []),
    { driver: 'virtio-serial-pci', id: 'vser0' },
    { driver: 'virtserialport', id: 'agentport', bus: 'vser0.0', chardev: AGENT_CHARDEV, name: AGENT_PORT_NAME },
    // The caller's devices first: they may pin slots (root ports at 0x2.0...);
    // the 9p shares take whatever slots are left.
    ...(opts.devices ?? []),
    ...(opts.rootShare ? [{ driver: 'virtio-9p-pci', id: 'fs-root', fsdev: ROOT_SHARE_TAG, mount_tag: ROOT_SHARE_TAG }] : []),
    ...(opts.resultsShare ? [{ driver: 'virtio-9p-pci', id: 'fs-results', fsdev: RESULTS_SHARE_TAG, mount_tag: RESULTS_SHARE_TAG }] : []),
    ...(opts.extraShares ?? []).map((x) => ({ driver: 'virtio-9p-pci', id: `fs-${x.tag}`, fsdev: x.tag, mount_tag: x.tag })),
  ];
  const root = rootHostPath(opts, platform);
  const shares = [
    ...(root !== undefined ? fsdev(ROOT_SHARE_TAG, root, true) : []),
    ...(opts.resultsShare ? fsdev(RESULTS_SHARE_TAG, opts.resultsShare.hostPath, false) : []),
    ...(opts.extraShares ?? []).flatMap((x) => fsdev(x.tag, x.hostPath, true)),
  ];
  return {
    arch: platform.arch,
    machine: platform.machine(iommu !== undefined),
    accel: opts.accel ?? 'tcg',
    cpu: opts.cpu ?? platform.cpu,
    smp: opts.smp ?? 2,
    memoryMB: opts.memoryMB ?? 1024,
    kernel: { path: opts.image.kernel, initrd: opts.image.initrd, append: guestCmdline(opts, platform) },
    serial: true,
    chardevs: [AGENT_CHARDEV],
    devices,
    ...(opts.globals ? { globals: opts.globals } : {}),
    ...(opts.objects ? { objects: opts.objects } : {}),
    ...(opts.trace ? { trace: opts.trace } : {}),
    extraArgs: ['-no-reboot', ...platform.firmwareArgs(opts.image), ...shares, ...(opts.extraArgs ?? [])],
  };
}

/**
 * Makes, in a 9p root folder of our own (not the host's /), the mount points
 * of the results and extra shares it lacks: the guest sees that root
 * read-only and could not make them (init fails the boot instead). An arm64
 * root has neither the checkout's nor the cache's path of the host.
 */
export function prepareRootMountPoints(opts: GuestOptions): string[] {
  const root = rootHostPath(opts, platformOf(opts.image));
  if (root === undefined || root === '/') return [];
  const made: string[] = [];
  for (const guestPath of [opts.resultsShare?.guestPath, ...(opts.extraShares ?? []).map((x) => x.guestPath)]) {
    if (guestPath === undefined) continue;
    const p = join(root, guestPath);
    if (existsSync(p)) continue;
    mkdirSync(p, { recursive: true });
    made.push(p);
  }
  return made;
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
  const desc = guestDescription(opts);
  prepareRootMountPoints(opts);
  const t0 = Date.now();
  const machine = await launch(desc);
  const launchMs = Date.now() - t0;
  const { console, agent } = attachGuest(machine);
  const stopped = guestStopped(machine, console);
  try {
    const ready = await withHeartbeat(`${machine.name}'s guest to boot (its agent to answer)`, () => Promise.race([agent.ready(boot.readyTimeoutMs ?? 60_000), stopped.promise]), {
      last: () => console.tail(1),
    });
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
