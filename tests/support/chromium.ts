import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { skipBecause } from '../../harness/report/skip.js';

export const CHROMIUM = '/usr/bin/chromium';

/** Skips the suite (naming why) where Debian's chromium is not installed. */
export function requireChromium(ctx: Mocha.Context): void {
  if (!existsSync(CHROMIUM)) skipBecause(ctx, `no ${CHROMIUM} (Debian's chromium package, in scripts/bootstrap-tools.txt)`);
}

export interface Browser {
  ctx: BrowserContext;
  page: Page;
  /** Every URL the page requested. */
  requests: string[];
  /** Script errors and console errors. */
  errors: string[];
  close(): Promise<void>;
}

/** Headless Chromium with a fresh profile (outside the artifacts), one page, its requests and errors recorded. */
export async function launchChromium(): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'harness-chromium-'));
  let ctx: BrowserContext;
  try {
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      viewport: { width: 1400, height: 1000 },
      timeout: 30_000,
    });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const requests: string[] = [];
  const errors: string[] = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  return {
    ctx,
    page,
    requests,
    errors,
    close: async () => {
      await ctx.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
