import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor } from '../support/platform.js';

const YAML = await readFile(new URL('../../examples/dags/hello_ranges.yaml', import.meta.url), 'utf8');

for (const backend of BACKENDS) {
  test(`${backend}: manual source -> range_aggregator -> range_splitter -> sink runs end to end`, async () => {
    const p = await startPlatform(backend, { workers: 2 });
    try {
      const dep = await p.api('POST', '/v1/dags/hello_ranges/versions?activate=true', YAML);
      assert.equal(dep.status, 201, JSON.stringify(dep.body));
      assert.equal(dep.body.active, true);
      const again = await p.api('POST', '/v1/dags/hello_ranges/versions', YAML);
      assert.equal(again.status, 200);
      assert.equal(again.body.dag_version_id, dep.body.dag_version_id, 'same YAML is the same version');

      const trig = await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', { cursor: 2499 });
      assert.equal(trig.status, 201, JSON.stringify(trig.body));

      // cursor 2499 covers [0, 2500): ranges [0,1000) and [1000,2000); each split into 4 chunks.
      const done = await waitFor('all tasks completed', async () => {
        const r = await p.api('GET', '/v1/tasks?dag=hello_ranges&limit=100');
        const ts = r.body.tasks as Array<{ job_name: string; status: string }>;
        const by = (j: string) => ts.filter((t) => t.job_name === j);
        if (by('sink').length === 8 && ts.every((t) => t.status === 'Completed')) return ts;
        return undefined;
      });
      assert.equal(done.filter((t) => t.job_name === 'source').length, 1);
      assert.equal(done.filter((t) => t.job_name === 'ranges').length, 1);
      assert.equal(done.filter((t) => t.job_name === 'chunks').length, 2);
      const sinks = await p.api('GET', '/v1/tasks?dag=hello_ranges&job=sink&limit=100');
      const keys = (sinks.body.tasks as Array<{ inputs: Array<{ partition_key: string }> }>).map((t) => t.inputs[0]!.partition_key).sort((a, b) => Number(a.split('-')[0]) - Number(b.split('-')[0]));
      assert.deepEqual(keys, ['0-250', '250-500', '500-750', '750-1000', '1000-1250', '1250-1500', '1500-1750', '1750-2000']);
      const one = await p.api('GET', `/v1/tasks/${trig.body.task_id}`);
      assert.equal(one.body.status, 'Completed');
      assert.equal(one.body.attempts.length, 1);
      assert.equal(one.body.attempts[0].status, 'Completed');

      // A later cursor continues from the durable aggregator state: only [2000,3000) is new.
      await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', { cursor: 3100 });
      await waitFor('second range split', async () => {
        const r = await p.api('GET', '/v1/tasks?dag=hello_ranges&job=sink&limit=100');
        const ts = r.body.tasks as Array<{ status: string }>;
        return ts.length === 12 && ts.every((t) => t.status === 'Completed');
      });
      const ds = await p.api('GET', '/v1/datasets/hello_chunks');
      assert.equal(ds.status, 200);
      assert.ok(ds.body.current_version);
    } finally {
      await p.close();
    }
  });
}
