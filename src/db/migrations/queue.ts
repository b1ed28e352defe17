import type { Migration } from './types.js';

/**
 * The pgqueue tables for a queue database of its own (TRACE_QUEUE_DATABASE_URL set to a
 * database other than the state one). The same tables are part of state migration 1, so these
 * statements are written to be no-ops there; they are recorded in `queue_schema_migrations`, apart
 * from the state and data histories, so any database can also hold the queue.
 */
export const queueMigrations: Migration[] = [
  {
    version: 1,
    name: 'pgqueue: messages and dead letters',
    sql: `
CREATE TABLE IF NOT EXISTS queue_messages (
  id bigserial PRIMARY KEY,
  queue text NOT NULL,
  body jsonb NOT NULL,
  visible_at timestamptz NOT NULL DEFAULT now(),
  receive_count int NOT NULL DEFAULT 0,
  receipt uuid,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages (queue, visible_at, id);

CREATE TABLE IF NOT EXISTS queue_dead_letters (
  id bigint PRIMARY KEY,
  queue text NOT NULL,
  body jsonb NOT NULL,
  receive_count int NOT NULL,
  created_at timestamptz NOT NULL,
  dead_at timestamptz NOT NULL DEFAULT now(),
  last_error text
);
CREATE INDEX IF NOT EXISTS queue_dead_letters_queue ON queue_dead_letters (queue, dead_at);
`,
  },
];
