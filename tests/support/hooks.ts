// Loaded by .mocharc.yml; `harness run` loads the same hooks itself.
export { mochaHooks } from '../../harness/testing/root-hooks.js';

import Mocha from 'mocha';
import { confineTmpdir } from '../../harness/util/run-tmp.js';
import { scaleMochaTimeouts } from '../../harness/util/timeouts.js';

// Before any test file loads: what the tests (and what they start) make in os.tmpdir() goes with the run.
confineTmpdir();

// mocha loads this before any test file, so every test's and hook's timeout scales ($HARNESS_TIMEOUT_MULTIPLIER).
scaleMochaTimeouts(Mocha.Runnable);
