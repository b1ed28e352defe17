import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor } from '../support/platform.js';
import { deploy } from '../support/drive.js';

for (const backend of BACKENDS) {
  test(`${backend}: an always-on source keeps exactly one live task and is restarted when it ends`, async () => {
    const p = await startPlatform(backend, { workers: 1, settings: { sourceRestartSeconds: 1 } });
    try {
      await deploy(p, `name: follower
jobs:
  - name: follow
    activation: source
    runtime: ecs_platform
    operator: test_sleep
    source: { kind: always_on }
    outputs: 1
    config: { ms: 300 }
`);
      const count = async (sql: string) => (await p.dbs.state.query<{ n: number }>(sql)).rows[0]!.n;
      await waitFor('first run started', async () => (await count(`SELECT count(*)::int AS n FROM tasks`)) >= 1);
      let maxLive = 0;
      await waitFor('restarted after it ended', async () => {
        maxLive = Math.max(maxLive, await count(`SELECT count(*)::int AS n FROM tasks WHERE status IN ('Queued', 'Running')`));
        return (await count(`SELECT count(*)::int AS n FROM tasks WHERE status = 'Completed'`)) >= 2;
      }, 20_000, 25);
      assert.equal(maxLive, 1, 'never more than one live task per always-on source');
    } finally {
      await p.close();
    }
  });
}
