// Loaded by .mocharc.yml; `harness run` loads the same hooks itself.
export { mochaHooks } from '../../harness/testing/root-hooks.js';

import Mocha from 'mocha';
import { scaleMochaTimeouts } from '../../harness/util/timeouts.js';

// mocha loads this before any test file, so every test's and hook's timeout scales ($HARNESS_TIMEOUT_MULTIPLIER).
scaleMochaTimeouts(Mocha.Runnable);
