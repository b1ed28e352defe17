import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Db, Queryable } from '../../src/db/db.js';
import { openDb } from '../../src/db/open.js';
import { isTraceError } from '../../src/core/errors.js';
import { DEFAULT_MAX_RECEIVES, PgQueue } from '../../src/queue/pgqueue.js';
import { openQueue } from '../../src/queue/open.js';
import { BUFFER_QUEUE, TASK_QUEUE } from '../../src/queue/queue.js';
import { BACKENDS, freshDbs, type TestDbs } from '../support/db.js';

/** A Db that counts the statements sent through it (listen is passed through, not counted). */
function counting(db: Db): { db: Db; queries: () => number; sql: string[] } {
  const sql: string[] = [];
  const wrapped: Db = {
    kind: db.kind,
    query: (text, params) => {
      sql.push(text);
      return db.query(text, params);
    },
    exec: (text) => db.exec(text),
    tx: (fn) => db.tx(fn),
    listen: (channel, onNotify) => db.listen(channel, onNotify),
    close: () => db.close(),
  };
  return { db: wrapped, queries: () => sql.length, sql };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isTraceError(e) && e.code === code);
}

let queueSeq = 0;
const qname = (label: string) => `${label}_${++queueSeq}`;

for (const backend of BACKENDS) {
  describe(`pgqueue on ${backend}`, () => {
    let dbs: TestDbs;
    let queue: PgQueue;

    before(async () => {
      dbs = await freshDbs(backend);
      queue = openQueue({ kind: 'pgqueue', db: dbs.state });
    });
    after(async () => {
      await queue.close();
      await dbs.close();
    });

    test('send, receive, ack', async () => {
      const q = qname('basic');
      await queue.send(q, { task_id: 'a' });
      await queue.sendBatch(q, [{ task_id: 'b' }, 'plain string']);
      assert.equal(await queue.depth(q), 3);
      const got = await queue.receive<unknown>(q, { maxMessages: 10 });
      assert.deepEqual(got.map((m) => m.body), [{ task_id: 'a' }, { task_id: 'b' }, 'plain string']);
      assert.ok(got.every((m) => m.receiveCount === 1));
      assert.equal(new Set(got.map((m) => m.receipt)).size, 3);
      assert.equal(new Set(got.map((m) => m.id)).size, 3);
      // in flight: hidden from other receivers, still counted in depth
      assert.deepEqual(await queue.receive(q), []);
      assert.equal(await queue.depth(q), 3);
      for (const m of got) await queue.ack(q, m.receipt);
      assert.equal(await queue.depth(q), 0);
      assert.deepEqual(await queue.receive(q), []);
      // acking again, or on the wrong queue, is a no-op; a malformed receipt is refused
      await queue.ack(q, got[0]!.receipt);
      await rejectsWithCode(queue.ack(q, 'not-a-receipt'), 'INVALID_RECEIPT');
    });

    test('bad input is refused before touching the database', async () => {
      const c = counting(dbs.state);
      const pq = new PgQueue(c.db);
      await rejectsWithCode(pq.send('bad name!', {}), 'INVALID_QUEUE_ARGUMENT');
      await rejectsWithCode(pq.send('q', undefined), 'INVALID_QUEUE_MESSAGE');
      await rejectsWithCode(pq.send('q', { blob: 'x'.repeat(300 * 1024) }), 'QUEUE_MESSAGE_TOO_LARGE');
      await rejectsWithCode(pq.send('q', {}, { delaySeconds: -1 }), 'INVALID_QUEUE_ARGUMENT');
      await rejectsWithCode(pq.receive('q', { visibilityTimeoutSeconds: -5 }), 'INVALID_QUEUE_ARGUMENT');
      await rejectsWithCode(pq.receive('q', { maxMessages: 0 }), 'INVALID_QUEUE_ARGUMENT');
      assert.throws(() => pq.setMaxReceives('q', 0), (e: unknown) => isTraceError(e) && e.code === 'INVALID_QUEUE_ARGUMENT');
      assert.equal(c.queries(), 0);
      await pq.close();
      await rejectsWithCode(pq.send('q', {}), 'QUEUE_CLOSED');
    });

    test('an unacked message comes back after its visibility timeout with a new receipt', async () => {
      const q = qname('vis');
      await queue.send(q, { n: 1 });
      const [first] = await queue.receive(q, { visibilityTimeoutSeconds: 1 });
      assert.ok(first);
      assert.deepEqual(await queue.receive(q), [], 'hidden while in flight');
      // The long poll wakes itself when the hidden message comes due (well before waitMs).
      const t0 = Date.now();
      const [second] = await queue.receive(q, { visibilityTimeoutSeconds: 30, waitMs: 5000 });
      const waited = Date.now() - t0;
      assert.ok(second, 'message visible again');
      assert.ok(waited < 3000, `woke when due, waited ${waited} ms`);
      assert.equal(second.id, first.id);
      assert.equal(second.receiveCount, 2);
      assert.notEqual(second.receipt, first.receipt);
      // the old receipt can no longer ack (or hide) it
      await queue.ack(q, first.receipt);
      await queue.changeVisibility(q, first.receipt, 0);
      assert.equal(await queue.depth(q), 1);
      assert.deepEqual(await queue.receive(q), [], 'stale receipt did not make it visible');
      await queue.ack(q, second.receipt);
      assert.equal(await queue.depth(q), 0);
    });

    test('changeVisibility extends (and can end) the hidden period', async () => {
      const q = qname('chvis');
      await queue.send(q, { n: 1 });
      const [m] = await queue.receive(q, { visibilityTimeoutSeconds: 1 });
      assert.ok(m);
      await queue.changeVisibility(q, m.receipt, 4);
      // without the extension it would reappear after 1 s
      assert.deepEqual(await queue.receive(q, { waitMs: 1800 }), []);
      await queue.changeVisibility(q, m.receipt, 0);
      const [again] = await queue.receive(q);
      assert.ok(again);
      assert.equal(again.receiveCount, 2);
      await rejectsWithCode(queue.changeVisibility(q, again.receipt, 99999), 'INVALID_QUEUE_ARGUMENT');
    });

    test('dead letters after max receives, and replay', async () => {
      assert.equal(DEFAULT_MAX_RECEIVES[BUFFER_QUEUE], 10);
      assert.equal(DEFAULT_MAX_RECEIVES[TASK_QUEUE], Infinity);
      // buffers: 10 receives, the 11th moves it to the dead letters
      await queue.send(BUFFER_QUEUE, { batch_uri: 'file:///b/1' });
      for (let i = 1; i <= 10; i++) {
        const [m] = await queue.receive(BUFFER_QUEUE, { visibilityTimeoutSeconds: 0 });
        assert.equal(m?.receiveCount, i);
      }
      assert.deepEqual(await queue.receive(BUFFER_QUEUE, { visibilityTimeoutSeconds: 0 }), []);
      assert.equal(await queue.depth(BUFFER_QUEUE), 0);
      const dead = await queue.listDeadLetters(BUFFER_QUEUE);
      assert.equal(dead.length, 1);
      assert.deepEqual(dead[0]!.body, { batch_uri: 'file:///b/1' });
      assert.equal(dead[0]!.receiveCount, 10);
      assert.ok(dead[0]!.deadAt instanceof Date);
      assert.match(dead[0]!.lastError ?? '', /max receives/);
      assert.equal(await queue.replayDeadLetter(BUFFER_QUEUE, dead[0]!.id), true);
      assert.equal(await queue.replayDeadLetter(BUFFER_QUEUE, dead[0]!.id), false, 'already replayed');
      assert.equal(await queue.replayDeadLetter(BUFFER_QUEUE, '987654'), false, 'unknown id');
      assert.equal(await queue.replayDeadLetter(BUFFER_QUEUE, 'nope'), false, 'malformed id');
      assert.deepEqual(await queue.listDeadLetters(BUFFER_QUEUE), []);
      const [back] = await queue.receive(BUFFER_QUEUE);
      assert.equal(back?.id, dead[0]!.id);
      assert.equal(back?.receiveCount, 1, 'fresh receive count');
      await queue.ack(BUFFER_QUEUE, back!.receipt);

      // tasks are unlimited by default
      const tq = qname('tasks');
      await queue.send(tq, { task_id: 't' });
      for (let i = 1; i <= 12; i++) assert.equal((await queue.receive(tq, { visibilityTimeoutSeconds: 0 }))[0]?.receiveCount, i);

      // a dead message and a live one picked in the same receive: only the live one is returned
      const q = qname('mixed');
      queue.setMaxReceives(q, 1);
      await queue.send(q, { n: 'old' });
      assert.equal((await queue.receive(q, { visibilityTimeoutSeconds: 0 })).length, 1);
      await queue.send(q, { n: 'new' });
      const got = await queue.receive(q, { visibilityTimeoutSeconds: 0 });
      assert.deepEqual(got.map((m) => m.body), [{ n: 'new' }]);
      assert.deepEqual((await queue.listDeadLetters(q)).map((d) => d.body), [{ n: 'old' }]);
    });

    test('delayed send is invisible (and not in depth) until due; a long poll wakes when it is', async () => {
      const q = qname('delay');
      await queue.send(q, { n: 1 }, { delaySeconds: 1 });
      assert.deepEqual(await queue.receive(q), []);
      assert.equal(await queue.depth(q), 0);
      const t0 = Date.now();
      const got = await queue.receive(q, { waitMs: 5000 });
      const waited = Date.now() - t0;
      assert.equal(got.length, 1);
      assert.ok(waited >= 700 && waited < 3000, `waited ${waited} ms for a 1 s delay`);
    });

    test('a batch of 1000 is one statement; receive caps at 100', async () => {
      const q = qname('batch');
      const c = counting(dbs.state);
      const pq = new PgQueue(c.db);
      await pq.sendBatch(q, Array.from({ length: 1000 }, (_, i) => ({ i })));
      assert.equal(c.queries(), 1, 'one statement');
      assert.equal(await queue.depth(q), 1000);
      const got = await queue.receive<{ i: number }>(q, { maxMessages: 500 });
      assert.equal(got.length, 100);
      // ids follow the order of the batch
      assert.deepEqual(got.map((m) => m.body.i), Array.from({ length: 100 }, (_, i) => i));
      await pq.sendBatch(q, []);
      assert.equal(c.queries(), 1, 'an empty batch sends nothing');
      await pq.close();
    });

    test('sendInTx enqueues with the transaction and wakes receivers at commit', async () => {
      const q = qname('tx');
      await assert.rejects(dbs.state.tx(async (tx: Queryable) => {
        await queue.sendInTx(tx, q, [{ n: 'rolled back' }]);
        throw new Error('boom');
      }), /boom/);
      assert.equal(await queue.depth(q), 0);
      const waiting = queue.receive(q, { waitMs: 5000 });
      await sleep(100);
      const t0 = Date.now();
      await dbs.state.tx(async (tx: Queryable) => {
        await queue.sendInTx(tx, q, [{ n: 'committed' }]);
      });
      const got = await waiting;
      assert.deepEqual(got.map((m) => m.body), [{ n: 'committed' }]);
      assert.ok(Date.now() - t0 < 2500, 'woken by the commit, not by the 5 s wait running out');
    });

    test('long poll wakes on a send from another connection', async (t) => {
      const q = qname('wake');
      // Postgres: a separate pool and listener; PGlite has a single connection, so the sender is
      // a second PgQueue over the same database.
      const senderDb = backend === 'postgres' ? await openDb(dbs.stateUrl, { max: 1 }) : dbs.state;
      const sender = new PgQueue(senderDb);
      const c = counting(dbs.state);
      const receiver = new PgQueue(c.db);
      try {
        const waiting = receiver.receive(q, { waitMs: 5000 });
        while (c.queries() < 1) await sleep(5);
        await sleep(150); // the receiver is now parked on LISTEN
        const t0 = Date.now();
        await sender.send(q, { task_id: 'x' });
        const got = await waiting;
        const latency = Date.now() - t0;
        assert.equal(got.length, 1);
        assert.ok(latency < 2500, `wake-up latency ${latency} ms (the wait is 5 s)`);
        t.diagnostic(`wake-up latency ${latency} ms`);
      } finally {
        await receiver.close();
        await sender.close();
        if (senderDb !== dbs.state) await senderDb.close();
      }
    });

    test('an idle long poll issues few queries and ignores other queues', async () => {
      const q = qname('idle');
      const c = counting(dbs.state);
      const pq = new PgQueue(c.db);
      const t0 = Date.now();
      const waiting = pq.receive(q, { waitMs: 1500 });
      await sleep(200);
      await queue.sendBatch(qname('other'), [{ a: 1 }]);
      await queue.send(qname('other'), { a: 2 });
      const got = await waiting;
      const elapsed = Date.now() - t0;
      assert.deepEqual(got, []);
      assert.ok(elapsed >= 1400, `waited the full waitMs (${elapsed} ms)`);
      assert.ok(c.queries() <= 3, `idle long poll issued ${c.queries()} queries`);
      await pq.close();
    });

    test('abort and close end a long poll early with no messages', async () => {
      const q = qname('abort');
      const ac = new AbortController();
      const t0 = Date.now();
      setTimeout(() => ac.abort(), 100);
      assert.deepEqual(await queue.receive(q, { waitMs: 10_000, signal: ac.signal }), []);
      assert.ok(Date.now() - t0 < 2000);
      assert.deepEqual(await queue.receive(q, { waitMs: 10_000, signal: ac.signal }), [], 'already aborted');
      const pq = new PgQueue(dbs.state);
      const t1 = Date.now();
      const waiting = pq.receive(q, { waitMs: 10_000 });
      await sleep(100);
      await pq.close();
      assert.deepEqual(await waiting, []);
      assert.ok(Date.now() - t1 < 2000);
    });

    if (backend === 'postgres') {
      test('concurrent receivers never get the same in-flight message (real Postgres)', async () => {
        const q = qname('conc');
        const M = 400;
        const pools = await Promise.all([0, 1, 2].map(() => openDb(dbs.stateUrl, { max: 4 })));
        const queues = pools.map((db) => new PgQueue(db));
        const seen: string[] = [];
        let done = false;
        try {
          // receivers park first; the producer then sends in batches while they drain
          const receivers = Array.from({ length: 12 }, async (_, r) => {
            const pq = queues[r % queues.length]!;
            const deadline = Date.now() + 30_000;
            while (!done && Date.now() < deadline) {
              const got = await pq.receive(q, { maxMessages: 7, visibilityTimeoutSeconds: 120, waitMs: 500 });
              for (const m of got) seen.push(m.id);
              if (seen.length >= M) done = true;
            }
          });
          await sleep(200);
          for (let b = 0; b < M / 40; b++) {
            await queues[b % queues.length]!.sendBatch(q, Array.from({ length: 40 }, (_, i) => ({ b, i })));
          }
          await Promise.all(receivers);
          assert.equal(seen.length, new Set(seen).size, 'no message delivered twice while invisible');
          assert.equal(seen.length, M, 'every message received');
          assert.equal(await queue.depth(q), M, 'all still in flight');
        } finally {
          done = true;
          for (const pq of queues) await pq.close();
          for (const db of pools) await db.close();
        }
      });
    }
  });
}
