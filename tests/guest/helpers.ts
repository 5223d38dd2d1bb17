import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootGuest, type BootedGuest, type GuestOptions } from '../../harness/guest/boot.js';
import { requireGuestImage, type GuestImage } from '../../harness/guest/image.js';
import { useMachines, type MachineFixture } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';

/** Guest tests need the reference QEMU and a built kernel + initramfs; else a skip naming which. */
export async function requireGuest(ctx: Mocha.Context): Promise<GuestImage> {
  await requireQemu(ctx, 'x86_64');
  return requireGuestImage(ctx, 'x86_64');
}

/**
 * Boots a guest owned by the test's fixture (torn down after the test, pass
 * or fail) and records its boot timing in the test's artifacts.
 */
export async function boot(machines: MachineFixture, opts: GuestOptions, readyTimeoutMs = 30_000): Promise<BootedGuest> {
  const g = await bootGuest((d) => machines.launch(d), opts, { readyTimeoutMs });
  writeFileSync(
    join(g.machine.artifactsDir, 'boot-timing.json'),
    JSON.stringify({ launchMs: g.launchMs, agentReadyMs: g.agentReadyMs, guestUptimeS: g.guestUptimeS }) + '\n',
  );
  return g;
}

/**
 * The suite's guest image, checked once in a before() hook (a skip with the
 * reason when QEMU or the image is missing), and the test's machines.
 */
export function useGuest(): { readonly image: GuestImage; readonly machines: MachineFixture } {
  const state = { image: undefined as GuestImage | undefined };
  before(async function () {
    state.image = await requireGuest(this);
  });
  const machines = useMachines();
  return {
    get image(): GuestImage {
      if (!state.image) throw new Error('useGuest(): the image is only known once the suite has started');
      return state.image;
    },
    machines,
  };
}
