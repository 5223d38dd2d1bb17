/**
 * `harness doctor`: what this host offers the scenario suites, as a table for
 * people or JSON for machines, ending with each scenario prerequisite and its
 * reason. Exit status: 0 report printed, 1 binding failed to give a device
 * back, 128 bad usage or an invalid profile.
 */
import { hostPrerequisites, probeHost, type DeviceReport, type HostReport, type Prerequisite, type VtdReport } from '../host/report.js';
import { loadProfile, profileFromEnv, type HostProfile } from '../host/profile.js';
import { checkHostList, formatChecklist } from '../host/checklist.js';
import { hostPathsUnder } from '../host/sysfs.js';
import { runCommandSpec, str, UsageError, type CommandSpec, type Io, type Parsed } from './options.js';

export { hostPrerequisites, probeHost } from '../host/report.js';
export type { HostPrerequisites, HostReport, Prerequisite, PrerequisiteName } from '../host/report.js';

export const DOCTOR: CommandSpec = {
  name: 'doctor',
  summary: 'What this host offers the scenario suites: KVM, IOMMU (VT-d cap/ecap), iommufd, vfio cdev, the profile\'s devices (driver, group, PASID/ATS/PRI, iommufd hw info), and each scenario prerequisite with the reason it is met or not.',
  options: {
    json: { type: 'boolean', help: 'JSON instead of a table' },
    profile: { type: 'string', value: 'PATH|NAME', help: 'host profile (a path, or a name from qemu-configs/hosts); default $HARNESS_HOST_PROFILE' },
    bind: { type: 'boolean', help: "bind the profile's devices to vfio-pci for IOMMU_GET_HW_INFO, then give them back; leased as a lab run leases them, so a device another run holds is left to it, naming its PID" },
    'hwpt-flags': { type: 'string', value: '0x0,0x8,...', help: 'with --bind (or devices already on vfio-pci): IOMMU_HWPT_ALLOC flags to try' },
    checklist: { type: 'boolean', help: 'only the lab-machine checklist (kernel options, command line, modules, permissions), each item checked here, with the fix for what is not met' },
    root: { type: 'string', value: 'DIR', help: 'read sys/, dev/, proc/ (and boot/) below DIR instead of / (fake hosts in tests)' },
  },
  epilogue: 'exit status: 0 report printed, 1 a device could not be given back to its driver, 128 bad usage or an invalid profile',
};

export interface DoctorIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

function parseFlagsList(s: string): number[] {
  return s.split(',').map((t) => {
    const v = Number(t.trim());
    if (!t.trim() || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new UsageError(`--hwpt-flags: ${JSON.stringify(t)} is not a 32-bit number`);
    return v;
  });
}

export function doctorCommand(args: string[], io: DoctorIo = process): Promise<number> {
  return runCommandSpec(DOCTOR, args, doctor, io);
}

async function doctor({ values }: Parsed, io: Io): Promise<number> {
  const f = str(values, 'hwpt-flags');
  const hwptFlags = f === undefined ? undefined : parseFlagsList(f);
  const profileArg = str(values, 'profile') ?? profileFromEnv();
  let profile: HostProfile | undefined;
  if (profileArg) {
    try {
      profile = loadProfile(profileArg);
    } catch (e) {
      throw new UsageError((e as Error).message, false);
    }
  }
  const root = str(values, 'root');
  const checklist = checkHostList(root ? { paths: hostPathsUnder(root) } : {});
  if (values.checklist) {
    io.stdout.write(values.json ? `${JSON.stringify(checklist, null, 2)}\n` : formatChecklist(checklist));
    return 0;
  }
  const report = await probeHost({
    ...(root && { paths: hostPathsUnder(root) }),
    ...(profile && { profile }),
    bind: values.bind === true,
    ...(hwptFlags && { hwptFlags }),
    binder: { log: (l) => io.stderr.write(`harness doctor: ${l}\n`) },
  });
  const prerequisites = hostPrerequisites(report);
  if (values.json) io.stdout.write(`${JSON.stringify({ ...report, prerequisites, checklist }, null, 2)}\n`);
  else io.stdout.write(formatReport(report, prerequisites) + checklistSummary(checklist));
  return report.devices.some((d) => d.problems.some((p) => p.startsWith('giving back'))) ? 1 : 0;
}

/** One line under the report: how much of the lab checklist this host meets, and where to read the rest. */
function checklistSummary(items: ReturnType<typeof checkHostList>): string {
  const unmet = items.filter((i) => i.state !== 'ok');
  return `\nlab-machine checklist: ${items.length - unmet.length} of ${items.length} met${unmet.length ? ` (not: ${unmet.map((i) => i.id).join(', ')}; harness doctor --checklist says how)` : ''}\n`;
}

const mark = (ok: boolean): string => (ok ? 'ok  ' : 'NO  ');
const pad = (s: string, n: number): string => s.padEnd(n);

function vtdLine(v: VtdReport): string {
  const has = (b: boolean, name: string): string => (b ? name : `no ${name}`);
  return [
    `cap ${v.cap} ecap ${v.ecap}`,
    [
      has(v.scalableMode, 'scalable mode'),
      has(v.nested, 'NEST'),
      has(v.firstStage, 'FSTS'),
      has(v.secondStage, 'SLTS'),
      v.pasid ? `PASID ${v.pasidBits} bits` : 'no PASID',
      has(v.secondStageAccessedDirty, 'SLADS (dirty tracking)'),
      ...(v.cachingMode ? ['caching mode'] : []),
    ].join(', '),
  ].join(': ');
}

function deviceLines(d: DeviceReport): string[] {
  const head = `  ${d.bdf}  ${pad(d.name ?? '', 10)} role ${pad(d.role, 13)}`;
  if (!d.exists) return [`${head} MISSING: ${d.problems.join('; ')}`];
  const caps = d.extCaps;
  const capText = caps?.pasid
    ? `PASID ${caps.pasid.maxPasidWidth} bits${caps.pasid.execPermissionSupported ? ' exec' : ''}${caps.pasid.privilegedModeSupported ? ' priv' : ''}`
    : caps && !d.extCapsReason
      ? 'no PASID'
      : `PASID ? (${d.extCapsReason ?? 'unreadable'})`;
  const lines = [
    `${head} ${d.vendor}:${d.device} driver ${d.driver ?? 'none'}, group ${d.iommuGroup ?? 'none'}${d.groupPeers.length ? ` (with ${d.groupPeers.join(', ')})` : ''}${d.cdev ? `, ${d.cdev}` : ''}`,
    `      ${capText}, ${caps?.ats ? 'ATS' : 'no ATS'}, ${caps?.pri ? 'PRI' : 'no PRI'}${d.behindConventionalBridge ? ', behind a conventional PCI bridge' : ''}`,
  ];
  if (d.hwInfo?.ok)
    lines.push(
      `      hw info: ${d.hwInfo.outDataType}, max_pasid_log2 ${d.hwInfo.outMaxPasidLog2}, capabilities ${d.hwInfo.capabilities!.join('|') || 'none'}${d.hwInfo.vtd ? `; ${vtdLine(d.hwInfo.vtd)}` : ''}`,
    );
  else if (d.hwInfo) lines.push(`      hw info: ${d.hwInfo.reason}`);
  if (d.hwptAlloc?.results) lines.push(`      HWPT_ALLOC: ${d.hwptAlloc.results.map((r) => `${r.flags} ${r.ok ? 'ok' : r.errno}`).join(', ')}`);
  else if (d.hwptAlloc) lines.push(`      HWPT_ALLOC: ${d.hwptAlloc.reason}`);
  for (const p of d.problems) lines.push(`      problem: ${p}`);
  return lines;
}

export function formatReport(r: HostReport, pre: Record<string, Prerequisite>): string {
  const out: string[] = [`host: ${r.host.arch}, Linux ${r.host.kernel}${r.host.root ? '' : ' (not root: config space past 64 bytes is hidden)'}`];
  out.push(`  ${mark(r.kvm.ok)}KVM       ${r.kvm.ok ? `/dev/kvm usable for ${r.kvm.arch}` : r.kvm.reason}`);
  if (!r.iommu.instances.length) out.push(`  ${mark(false)}IOMMU     ${pre.iommu!.reason}`);
  for (const i of r.iommu.instances) {
    out.push(`  ${mark(true)}IOMMU     ${i.name} (${i.kind}, ${i.devices} devices)${i.vtd ? `: ${vtdLine(i.vtd)}` : ''}`);
    if (i.note) out.push(`            ${i.note}`);
    for (const p of i.problems) out.push(`            problem: ${p}`);
  }
  out.push(`  ${mark(r.iommufd.ok)}iommufd   ${pre.iommufd!.reason}`);
  out.push(`  ${mark(pre.vfioCdev!.ok)}vfio cdev ${pre.vfioCdev!.reason}`);
  out.push(`  ${mark(r.probeTool.built)}helper    ${r.probeTool.built ? r.probeTool.path : `iommufd-probe not built (${r.probeTool.path}; scripts/build-tools.sh)`}`);
  if (r.profile) {
    out.push('', `profile ${r.profile.name} (${r.profile.source}): ${r.profile.platform}, accel ${r.profile.accel}${r.profile.resolvedAccel ? ` → ${r.profile.resolvedAccel}` : ''}`);
    if (r.profile.accelProblem) out.push(`  problem: ${r.profile.accelProblem}`);
    for (const d of r.devices) out.push(...deviceLines(d));
  } else out.push('', 'no host profile (--profile PATH|NAME or HARNESS_HOST_PROFILE): no devices checked');
  out.push('', 'scenario prerequisites:');
  for (const [name, p] of Object.entries(pre)) out.push(`  ${p.ok ? 'ok  ' : 'skip'} ${pad(name, 14)} ${p.reason}`);
  return `${out.join('\n')}\n`;
}
