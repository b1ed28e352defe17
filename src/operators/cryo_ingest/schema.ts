/**
 * Cryo's default column sets for the three datasets Trace writes natively, with the DuckDB /
 * Parquet types Cryo produces (checked against Cryo's source, `crates/freeze/src/datasets/`,
 * and against real Cryo output for `transactions`). The column order is Cryo's.
 *
 * Type mapping (Rust -> Parquet via Arrow -> DuckDB): u32 -> UINTEGER, u64 -> UBIGINT,
 * Vec<u8> -> BLOB, String -> VARCHAR, f64 -> DOUBLE, bool -> BOOLEAN. 256-bit integers
 * (`value`) become three columns: `value_binary` (32 bytes big-endian), `value_string`
 * (decimal) and `value_f64`.
 */

export const CRYO_DATASETS = ['blocks', 'transactions', 'logs'] as const;
export type CryoDataset = (typeof CRYO_DATASETS)[number];

export type ColumnKind = 'u32' | 'u64' | 'blob' | 'varchar' | 'f64' | 'bool';

export interface ColumnDef {
  name: string;
  kind: ColumnKind;
}

export const DUCKDB_TYPE: Record<ColumnKind, string> = {
  u32: 'UINTEGER',
  u64: 'UBIGINT',
  blob: 'BLOB',
  varchar: 'VARCHAR',
  f64: 'DOUBLE',
  bool: 'BOOLEAN',
};

const col = (name: string, kind: ColumnKind): ColumnDef => ({ name, kind });

export const CRYO_COLUMNS: Record<CryoDataset, readonly ColumnDef[]> = {
  blocks: [
    col('block_number', 'u32'),
    col('block_hash', 'blob'),
    col('timestamp', 'u32'),
    col('author', 'blob'),
    col('gas_used', 'u64'),
    col('extra_data', 'blob'),
    col('base_fee_per_gas', 'u64'),
    col('chain_id', 'u64'),
  ],
  transactions: [
    col('block_number', 'u32'),
    col('transaction_index', 'u64'),
    col('transaction_hash', 'blob'),
    col('nonce', 'u64'),
    col('from_address', 'blob'),
    col('to_address', 'blob'),
    col('value_binary', 'blob'),
    col('value_string', 'varchar'),
    col('value_f64', 'f64'),
    col('input', 'blob'),
    col('gas_limit', 'u64'),
    col('gas_used', 'u64'),
    col('gas_price', 'u64'),
    col('transaction_type', 'u32'),
    col('max_priority_fee_per_gas', 'u64'),
    col('max_fee_per_gas', 'u64'),
    col('success', 'bool'),
    col('n_input_bytes', 'u32'),
    col('n_input_zero_bytes', 'u32'),
    col('n_input_nonzero_bytes', 'u32'),
    col('chain_id', 'u64'),
  ],
  logs: [
    col('block_number', 'u32'),
    col('transaction_index', 'u32'),
    col('log_index', 'u32'),
    col('transaction_hash', 'blob'),
    col('address', 'blob'),
    col('topic0', 'blob'),
    col('topic1', 'blob'),
    col('topic2', 'blob'),
    col('topic3', 'blob'),
    col('data', 'blob'),
    col('n_data_bytes', 'u32'),
    col('chain_id', 'u64'),
  ],
};

/** Sort order Cryo applies before writing (and the order rows appear in our files). */
export const CRYO_SORT: Record<CryoDataset, readonly string[]> = {
  blocks: ['block_number'],
  transactions: ['block_number', 'transaction_index'],
  logs: ['block_number', 'log_index'],
};

export type CellValue = number | bigint | string | boolean | Uint8Array | null;
export type Row = Record<string, CellValue>;

export const isCryoDataset = (v: string): v is CryoDataset => (CRYO_DATASETS as readonly string[]).includes(v);
