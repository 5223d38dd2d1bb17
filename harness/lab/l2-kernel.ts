import type { GuestImage } from '../guest/image.js';
import { AARCH64_PLATFORM } from '../guest/platform.js';
import type { Machine } from '../qemu/machine.js';
import type { MachineFixture } from '../testing/fixtures.js';
import type { IommufdModel, KernelRecord } from '../trace/model.js';
import { sleep } from '../util/deadline.js';
import { iommufdModel, l2Description, probeL2, type L2Spec } from './l2.js';

/**
 * L2 running the harness's aarch64 kernel under arm-smmuv3 accel=on, with no
 * agent: the agent's virtio-serial-pci is an emulated endpoint, and
 * smmuv3_accel_supports_as refuses any on the SMMU's bus ("Emulated endpoint
 * devices are not allowed"), so LabFixture.bootL2Guest cannot serve this
 * config. What the test needs comes from L2's trace (the guest kernel probing
 * its SMMU makes QEMU allocate the vdevice and the nested HWPT) and from
 * QMP (query-pci: the bus numbers the guest's firmware gave). The guest runs
 * a shell on its console (harness.role=shell) and stays up.
 */
export async function bootL2Kernel(machines: MachineFixture, spec: L2Spec, image: GuestImage, memoryMB: number): Promise<Machine> {
  if (spec.config.arch !== 'aarch64')
    throw new Error(`bootL2Kernel: ${spec.config.name} is an ${spec.config.arch} machine; for x86_64 use LabFixture.bootL2Guest`);
  const probe = await probeL2('aarch64');
  const desc = l2Description({ ...spec, memoryMB }, probe);
  const kvm = spec.config.requires?.includes('kvm') === true;
  return machines.launch(
    {
      ...desc,
      paused: false,
      // As LabFixture.launchL2: KVM runs the host's own CPU model.
      ...(kvm ? { accel: 'kvm' as const, cpu: 'host' } : {}),
      kernel: {
        path: image.kernel,
        initrd: image.initrd,
        append: [`console=${AARCH64_PLATFORM.console}`, ...AARCH64_PLATFORM.append, 'panic=-1', 'loglevel=4', 'harness.role=shell'].join(' '),
      },
      serial: true,
      extraArgs: [...(desc.extraArgs ?? []), '-no-reboot'],
    },
    { name: 'l2-kernel', binary: probe.binary, readyTimeoutMs: 180_000 },
  );
}

/** Polls L2's trace model until `done` holds; fails naming what the model had, or that QEMU ended. */
export async function waitForModel(
  m: Machine,
  kernel: () => KernelRecord[],
  done: (model: IommufdModel) => boolean,
  what: string,
  ms: number,
): Promise<IommufdModel> {
  const end = Date.now() + ms;
  for (;;) {
    const model = await iommufdModel(m, kernel());
    if (done(model)) return model;
    if (m.exit || Date.now() > end) {
      throw new Error(
        `${m.name}: no ${what} ${m.exit ? `before QEMU ended (${m.exit.text})` : `within ${ms} ms`}; HWPTs ${model.hwptAllocs.map((h) => `${h.role ?? '?'}:${h.outcome}`).join(', ')}, vdevices ${model.vdevices.length}, STEs ${model.smmuSte.map((s) => s.type).join(', ')}\n${m.stderrTail()}`,
      );
    }
    await sleep(250);
  }
}
