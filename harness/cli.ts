#!/usr/bin/env node
import { runCli } from './cli/main.js';

// Exit explicitly: a handle left open by a test must not keep `harness run`
// alive (the exit hook still ends any QEMU it launched).
process.exit(await runCli(process.argv.slice(2)));
