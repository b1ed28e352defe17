import type { Migration } from './types.js';

/**
 * Postgres data: user-facing datasets and platform-owned query, alert and audit tables.
 * No foreign keys to Postgres state: org_id, user_id, task_id here are soft references.
 */
export const dataMigrations: Migration[] = [
  {
    version: 1,
    name: 'data database bootstrap',
    sql: `
CREATE TABLE data_info (
  key text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO data_info (key, value) VALUES ('role', 'trace-data');
`,
  },
];
