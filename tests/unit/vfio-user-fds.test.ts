import { expect } from 'chai';
import { execa } from 'execa';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';
import { pasidEndpoint } from '../../harness/vfio-user/devices/index.js';
import { Command } from '../../harness/vfio-user/protocol.js';
import { startVfioUserServer } from '../../harness/vfio-user/server.js';

const CLIENT = join(repoRoot, 'tests/fixtures/vfio-user/scm_client.py');

interface ClientResult {
  dmaMapsWithFd: number;
  seconds: number;
  roundTripsPerSecond: number;
  pipelinedSeconds: number;
  pipelinedPerSecond: number;
  pipeEof: boolean;
}

const openFds = (): string[] => readdirSync('/proc/self/fd');

/**
 * The server relies on Linux closing SCM_RIGHTS fds that arrive on a socket
 * read without a control buffer (see harness/vfio-user/server.ts). This checks
 * that claim on the running kernel with a client that really passes fds.
 */
describe('vfio-user server and passed file descriptors', function () {
  this.timeout(60_000);

  before(async function () {
    if (process.platform !== 'linux') skipBecause(this, `SCM_RIGHTS behaviour is Linux's; this is ${process.platform}`);
    const py = await execa('python3', ['-c', 'import os, socket; os.memfd_create; os.eventfd'], { reject: false });
    if (py.exitCode !== 0) skipBecause(this, `python3 with os.memfd_create and os.eventfd (3.10+) is needed to pass fds: ${py.stderr || py.shortMessage}`);
  });

  it('never holds the fds: /proc/self/fd does not grow and a passed pipe end is released', async function () {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-fds-'));
    const server = await startVfioUserServer({ socketPath: join(dir, 'dev.sock'), device: pasidEndpoint });
    try {
      const count = 5000;
      const before = openFds();
      const run = await execa('python3', [CLIENT, server.socketPath, String(count)], { timeout: 50_000 });
      await server.waitForSessionEnd(5000);
      const after = openFds();
      const r = JSON.parse(run.stdout) as ClientResult;
      // Each message carried one fd (two rounds of `count` DMA_MAPs, one SET_IRQS
      // with four eventfds, one DMA_MAP with a pipe end): thousands would show.
      expect(server.stats.dmaMaps).to.equal(2 * count + 1);
      expect(server.stats.setIrqs).to.equal(1);
      expect(after.length, `fds before ${before.length}, after ${after.length}`).to.equal(before.length);
      expect(r.pipeEof, 'the pipe write end passed to the server was closed by the kernel').to.equal(true);
      expect(server.stats.byCommand[Command.VERSION]).to.equal(1);
      this.test!.title += ` (${count} fd-carrying DMA_MAPs: ${Math.round(r.roundTripsPerSecond)}/s one at a time, ${Math.round(r.pipelinedPerSecond)}/s pipelined, Python client)`;
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
