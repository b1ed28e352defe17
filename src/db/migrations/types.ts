export interface Migration {
  /** Monotonic version; never renumber or edit an applied migration, add a new one. */
  version: number;
  name: string;
  sql: string;
}
