// Loaded by .mocharc.yml; `harness run` loads the same hooks itself.
export { mochaHooks } from '../../harness/testing/root-hooks.js';
