import { expect } from 'chai';
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';
import { withDeadline } from '../../harness/util/deadline.js';
import { VfioUserClient } from '../../harness/vfio-user/client.js';
import { Command } from '../../harness/vfio-user/protocol.js';

const CLI = join(repoRoot, 'dist/harness/vfio-user/cli.js');

describe('vfio-user server command line', function () {
  this.timeout(20_000);

  it('serves one session with --once and prints its counters', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-cli-'));
    const socket = join(dir, 'dev.sock');
    const proc = execa('node', [CLI, '--socket', socket, '--device', 'plain-endpoint', '--once'], { reject: false, timeout: 15_000 });
    try {
      let out = '';
      await withDeadline(
        new Promise<void>((resolve) =>
          proc.stdout!.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('\n')) resolve();
          }),
        ),
        10_000,
        'the CLI saying it listens',
      );
      expect(out).to.equal(`listening ${socket}\n`);
      const c = await VfioUserClient.connect(socket);
      await c.request(Command.VERSION, Buffer.alloc(4));
      c.close();
      const r = await proc;
      expect(r.exitCode).to.equal(0);
      const stats = JSON.parse(r.stdout.split('\n')[1]!) as { versionHandshakes: number };
      expect(stats.versionHandshakes).to.equal(1);
      expect(r.stderr).to.match(/vfio-user\[plain-endpoint\]: session ended \(peer-closed\)/);
    } finally {
      proc.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names a missing option and an unknown device', async () => {
    const missing = await execa('node', [CLI, '--device', 'plain-endpoint'], { reject: false, timeout: 10_000 });
    expect(missing.exitCode).to.equal(128);
    expect(missing.stderr).to.match(/--socket is required/);
    const unknown = await execa('node', [CLI, '--socket', join(tmpdir(), 'never.sock'), '--device', 'gpu'], { reject: false, timeout: 10_000 });
    expect(unknown.exitCode).to.equal(1);
    expect(unknown.stderr).to.match(/no built-in device description "gpu"/);
  });
});
