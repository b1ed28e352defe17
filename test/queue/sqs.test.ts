/**
 * Request shapes of the SQS adapter. A real SQSClient is used with a middleware at the front of
 * its stack that records each command's name and input and answers it, so nothing leaves the
 * process. This does not prove SQS accepts these requests; see the note in src/queue/sqs.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SQSClient, SQSServiceException } from '@aws-sdk/client-sqs';
import { isTraceError } from '../../src/core/errors.js';
import { SqsQueue } from '../../src/queue/sqs.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { openQueue } from '../../src/queue/open.js';
import type { Db } from '../../src/db/db.js';

type Input = Record<string, unknown>;
interface Call { name: string; input: Input }
type Handler = (name: string, input: Input, n: number) => Input | Promise<Input>;

const TASKS = 'https://sqs.us-east-1.amazonaws.com/123456789012/trace-tasks';
const BUFFERS = 'https://sqs.us-east-1.amazonaws.com/123456789012/trace-buffers';
const BUFFERS_DLQ = 'https://sqs.us-east-1.amazonaws.com/123456789012/trace-buffers-dlq';

function fakeSqs(handler: Handler = () => ({})): { queue: SqsQueue; calls: Call[]; client: SQSClient } {
  const client = new SQSClient({ region: 'us-east-1', credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'test' } });
  const calls: Call[] = [];
  client.middlewareStack.add(
    (_next, context) => async (args) => {
      const name = context.commandName ?? '?';
      const input = structuredClone(args.input) as Input;
      calls.push({ name, input });
      const output = await handler(name, input, calls.length);
      return { output: { $metadata: {}, ...output }, response: {} } as never;
    },
    { step: 'initialize', priority: 'high', name: 'traceFakeSqs' },
  );
  const queue = new SqsQueue({ client, queueUrls: { tasks: TASKS, buffers: BUFFERS }, dlqUrls: { buffers: BUFFERS_DLQ } });
  return { queue, calls, client };
}

function sqsError(name: string, message = name): SQSServiceException {
  return new SQSServiceException({ name, message, $fault: 'client', $metadata: {} });
}

async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isTraceError(e) && e.code === code);
}

test('send: SendMessage with JSON body and whole-second delay', async () => {
  const { queue, calls } = fakeSqs();
  await queue.send('tasks', { task_id: 'abc' });
  await queue.send('tasks', { task_id: 'def' }, { delaySeconds: 1.2 });
  assert.deepEqual(calls, [
    { name: 'SendMessageCommand', input: { QueueUrl: TASKS, MessageBody: '{"task_id":"abc"}' } },
    { name: 'SendMessageCommand', input: { QueueUrl: TASKS, MessageBody: '{"task_id":"def"}', DelaySeconds: 2 } },
  ]);
  await rejectsWithCode(queue.send('nope', {}), 'QUEUE_NOT_CONFIGURED');
  await rejectsWithCode(queue.send('tasks', { blob: 'x'.repeat(300 * 1024) }), 'QUEUE_MESSAGE_TOO_LARGE');
  assert.equal(calls.length, 2, 'refused sends issue nothing');
});

test('sendBatch: chunks of 10 (and 256 KiB), retries failed entries, refuses sender faults', async () => {
  const { queue, calls } = fakeSqs();
  await queue.sendBatch('tasks', Array.from({ length: 25 }, (_, i) => ({ i })));
  assert.deepEqual(calls.map((c) => c.name), ['SendMessageBatchCommand', 'SendMessageBatchCommand', 'SendMessageBatchCommand']);
  assert.deepEqual(calls.map((c) => (c.input.Entries as unknown[]).length), [10, 10, 5]);
  assert.ok(calls.every((c) => c.input.QueueUrl === TASKS));
  const first = calls[0]!.input.Entries as Array<{ Id: string; MessageBody: string }>;
  assert.deepEqual(first[3], { Id: '3', MessageBody: '{"i":3}' });
  assert.deepEqual(first.map((e) => e.Id), ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);

  const big = fakeSqs();
  await big.queue.sendBatch('tasks', [0, 1, 2].map((i) => ({ i, pad: 'x'.repeat(100 * 1024) })));
  assert.deepEqual(big.calls.map((c) => (c.input.Entries as unknown[]).length), [2, 1], 'byte limit splits batches');

  // a transient failure of one entry is retried with just that entry
  const flaky = fakeSqs((name, _input, n) => (n === 1
    ? { Successful: [], Failed: [{ Id: '1', Code: 'InternalError', SenderFault: false }] }
    : {}));
  await flaky.queue.sendBatch('tasks', [{ a: 0 }, { a: 1 }, { a: 2 }]);
  assert.equal(flaky.calls.length, 2);
  assert.deepEqual(flaky.calls[1]!.input.Entries, [{ Id: '1', MessageBody: '{"a":1}' }]);

  const bad = fakeSqs(() => ({ Failed: [{ Id: '0', Code: 'InvalidMessageContents', SenderFault: true }] }));
  await rejectsWithCode(bad.queue.sendBatch('tasks', [{ a: 0 }]), 'QUEUE_SEND_FAILED');
  assert.equal(bad.calls.length, 1, 'sender faults are not retried');
});

test('receive: long poll parameters and message mapping', async () => {
  const { queue, calls } = fakeSqs((name) => (name === 'ReceiveMessageCommand'
    ? {
      Messages: [
        { MessageId: 'm-1', ReceiptHandle: 'rh-1', Body: '{"task_id":"t1"}', Attributes: { ApproximateReceiveCount: '3' } },
        { MessageId: 'm-2', ReceiptHandle: 'rh-2', Body: 'not json' },
      ],
    }
    : {}));
  const got = await queue.receive('tasks', { maxMessages: 50, visibilityTimeoutSeconds: 12.5, waitMs: 5000 });
  assert.deepEqual(got, [
    { id: 'm-1', body: { task_id: 't1' }, receipt: 'rh-1', receiveCount: 3 },
    { id: 'm-2', body: 'not json', receipt: 'rh-2', receiveCount: 1 },
  ]);
  assert.deepEqual(calls, [{
    name: 'ReceiveMessageCommand',
    input: {
      QueueUrl: TASKS, MaxNumberOfMessages: 10, VisibilityTimeout: 13, WaitTimeSeconds: 5,
      MessageSystemAttributeNames: ['ApproximateReceiveCount'],
    },
  }]);
});

test('receive: WaitTimeSeconds comes from waitMs, capped at 20; defaults match pgqueue', async () => {
  const { queue, calls } = fakeSqs(() => ({ Messages: [{ MessageId: 'm', ReceiptHandle: 'r', Body: '1' }] }));
  await queue.receive('tasks', { waitMs: 60_000 });
  await queue.receive('tasks', { waitMs: 1500 });
  await queue.receive('tasks');
  assert.deepEqual(calls.map((c) => c.input.WaitTimeSeconds), [20, 2, 0]);
  assert.deepEqual(calls.map((c) => c.input.MaxNumberOfMessages), [10, 10, 10]);
  assert.deepEqual(calls.map((c) => c.input.VisibilityTimeout), [30, 30, 30]);

  // an empty long poll is one call; an aborted one issues nothing
  const empty = fakeSqs(() => ({}));
  assert.deepEqual(await empty.queue.receive('tasks', { waitMs: 3000 }), []);
  assert.equal(empty.calls.length, 1);
  const ac = new AbortController();
  ac.abort();
  assert.deepEqual(await empty.queue.receive('tasks', { waitMs: 3000, signal: ac.signal }), []);
  assert.equal(empty.calls.length, 1);
  await rejectsWithCode(empty.queue.receive('tasks', { maxMessages: 0 }), 'INVALID_QUEUE_ARGUMENT');
});

test('receive: a message past max receives goes to the DLQ and is not returned', async () => {
  let round = 0;
  const { queue, calls } = fakeSqs((name) => {
    if (name !== 'ReceiveMessageCommand') return {};
    round++;
    return round === 1
      ? {
        Messages: [
          { MessageId: 'old', ReceiptHandle: 'rh-old', Body: '{"b":1}', Attributes: { ApproximateReceiveCount: '11' } },
          { MessageId: 'ok', ReceiptHandle: 'rh-ok', Body: '{"b":2}', Attributes: { ApproximateReceiveCount: '10' } },
        ],
      }
      : {};
  });
  const got = await queue.receive('buffers'); // buffers default: 10 receives
  assert.deepEqual(got.map((m) => m.id), ['ok']);
  assert.deepEqual(calls.map((c) => c.name), ['ReceiveMessageCommand', 'SendMessageCommand', 'DeleteMessageCommand']);
  const moved = calls[1]!.input;
  assert.equal(moved.QueueUrl, BUFFERS_DLQ);
  assert.equal(moved.MessageBody, '{"b":1}');
  const attrs = moved.MessageAttributes as Record<string, { DataType: string; StringValue: string }>;
  assert.equal(attrs.trace_receive_count?.StringValue, '10');
  assert.match(attrs.trace_last_error?.StringValue ?? '', /max receives \(10\)/);
  assert.ok(!Number.isNaN(Date.parse(attrs.trace_dead_at?.StringValue ?? '')));
  assert.deepEqual(calls[2]!.input, { QueueUrl: BUFFERS, ReceiptHandle: 'rh-old' });

  // tasks: unlimited by default, and no DLQ configured, so nothing is moved
  const t = fakeSqs(() => ({ Messages: [{ MessageId: 'x', ReceiptHandle: 'r', Body: '{}', Attributes: { ApproximateReceiveCount: '99' } }] }));
  assert.equal((await t.queue.receive('tasks')).length, 1);
  t.queue.setMaxReceives('tasks', 2);
  assert.equal((await t.queue.receive('tasks')).length, 1, 'without a DLQ URL the message is still delivered');
});

test('ack and changeVisibility: request shapes and stale receipts', async () => {
  const { queue, calls } = fakeSqs((name, input) => {
    if (name === 'ChangeMessageVisibilityCommand' && input.ReceiptHandle === 'stale') throw sqsError('MessageNotInflight');
    if (name === 'DeleteMessageCommand' && input.ReceiptHandle === 'garbage') throw sqsError('ReceiptHandleIsInvalid');
    return {};
  });
  await queue.ack('tasks', 'rh-1');
  await queue.changeVisibility('tasks', 'rh-1', 90.2);
  await queue.changeVisibility('tasks', 'stale', 30);
  await rejectsWithCode(queue.ack('tasks', 'garbage'), 'INVALID_RECEIPT');
  assert.deepEqual(calls.slice(0, 3), [
    { name: 'DeleteMessageCommand', input: { QueueUrl: TASKS, ReceiptHandle: 'rh-1' } },
    { name: 'ChangeMessageVisibilityCommand', input: { QueueUrl: TASKS, ReceiptHandle: 'rh-1', VisibilityTimeout: 91 } },
    { name: 'ChangeMessageVisibilityCommand', input: { QueueUrl: TASKS, ReceiptHandle: 'stale', VisibilityTimeout: 30 } },
  ]);
  await rejectsWithCode(queue.changeVisibility('tasks', 'rh-1', 50_000), 'INVALID_QUEUE_ARGUMENT');
  await rejectsWithCode(queue.ack('tasks', ''), 'INVALID_RECEIPT');
  assert.equal(calls.length, 4);
});

test('depth: ApproximateNumberOfMessages + NotVisible', async () => {
  const { queue, calls } = fakeSqs(() => ({ Attributes: { ApproximateNumberOfMessages: '7', ApproximateNumberOfMessagesNotVisible: '5' } }));
  assert.equal(await queue.depth('buffers'), 12);
  assert.deepEqual(calls, [{
    name: 'GetQueueAttributesCommand',
    input: { QueueUrl: BUFFERS, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] },
  }]);
});

const DLQ_MESSAGES = [
  {
    MessageId: 'd-1', ReceiptHandle: 'drh-1', Body: '{"batch":1}',
    Attributes: { ApproximateReceiveCount: '12', SentTimestamp: '1700000000000' },
  },
  {
    MessageId: 'd-2', ReceiptHandle: 'drh-2', Body: '{"batch":2}', Attributes: { ApproximateReceiveCount: '1' },
    MessageAttributes: {
      trace_dead_at: { DataType: 'String', StringValue: '2024-01-02T03:04:05.000Z' },
      trace_receive_count: { DataType: 'Number', StringValue: '10' },
      trace_last_error: { DataType: 'String', StringValue: 'exceeded max receives (10)' },
    },
  },
];

function dlqHandler(): Handler {
  let served = false;
  return (name, input) => {
    if (name === 'ReceiveMessageCommand' && input.QueueUrl === BUFFERS_DLQ) {
      if (served) return {};
      served = true;
      return { Messages: DLQ_MESSAGES };
    }
    return {};
  };
}

test('listDeadLetters: reads the DLQ, then makes what it read visible again', async () => {
  const { queue, calls } = fakeSqs(dlqHandler());
  const dead = await queue.listDeadLetters('buffers', 50);
  assert.deepEqual(dead, [
    { id: 'd-1', body: { batch: 1 }, receiveCount: 12, deadAt: new Date(1700000000000), lastError: null },
    { id: 'd-2', body: { batch: 2 }, receiveCount: 10, deadAt: new Date('2024-01-02T03:04:05.000Z'), lastError: 'exceeded max receives (10)' },
  ]);
  assert.deepEqual(calls.map((c) => c.name), ['ReceiveMessageCommand', 'ReceiveMessageCommand', 'ChangeMessageVisibilityBatchCommand']);
  assert.deepEqual(calls[0]!.input, {
    QueueUrl: BUFFERS_DLQ, MaxNumberOfMessages: 10, VisibilityTimeout: 30, WaitTimeSeconds: 1,
    MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'], MessageAttributeNames: ['All'],
  });
  assert.deepEqual(calls[2]!.input, {
    QueueUrl: BUFFERS_DLQ,
    Entries: [
      { Id: '0', ReceiptHandle: 'drh-1', VisibilityTimeout: 0 },
      { Id: '1', ReceiptHandle: 'drh-2', VisibilityTimeout: 0 },
    ],
  });
  // a queue without a DLQ has no dead letters
  assert.deepEqual(await queue.listDeadLetters('tasks'), []);
});

test('replayDeadLetter: sends the body back, deletes it from the DLQ, releases the rest', async () => {
  const { queue, calls } = fakeSqs(dlqHandler());
  assert.equal(await queue.replayDeadLetter('buffers', 'd-2'), true);
  assert.deepEqual(calls.map((c) => c.name), [
    'ReceiveMessageCommand', 'SendMessageCommand', 'DeleteMessageCommand', 'ChangeMessageVisibilityBatchCommand',
  ]);
  assert.deepEqual(calls[1]!.input, { QueueUrl: BUFFERS, MessageBody: '{"batch":2}' });
  assert.deepEqual(calls[2]!.input, { QueueUrl: BUFFERS_DLQ, ReceiptHandle: 'drh-2' });
  assert.deepEqual(calls[3]!.input, { QueueUrl: BUFFERS_DLQ, Entries: [{ Id: '0', ReceiptHandle: 'drh-1', VisibilityTimeout: 0 }] });

  const miss = fakeSqs(dlqHandler());
  assert.equal(await miss.queue.replayDeadLetter('buffers', 'unknown'), false);
  assert.ok(!miss.calls.some((c) => c.name === 'SendMessageCommand' || c.name === 'DeleteMessageCommand'));
  assert.equal(miss.calls.at(-1)!.name, 'ChangeMessageVisibilityBatchCommand');
  assert.equal(await miss.queue.replayDeadLetter('tasks', 'd-1'), false, 'no DLQ configured');
});

test('openQueue picks the adapter', async () => {
  const fakeDb = { kind: 'pglite' } as unknown as Db;
  assert.ok(openQueue({ kind: 'pgqueue', db: fakeDb }) instanceof PgQueue);
  const sqs = openQueue({ kind: 'sqs', region: 'us-east-1', queueUrls: { tasks: TASKS } });
  assert.ok(sqs instanceof SqsQueue);
  await sqs.close();
  assert.throws(() => openQueue({ kind: 'sqs', queueUrls: { 'bad name!': TASKS } }), (e: unknown) => isTraceError(e));
});
